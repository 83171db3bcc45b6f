"""How noisy is a loss/ELBO oracle where the LDS reads it: the Monte-Carlo spread of the *difference* between two
retrained models' measurements of one sample, for several ways of drawing t.

With common random numbers every model is measured on the same (t, ε) draws, so the noise left in a difference is
what the draws do not cancel. This bench measures it directly: for ``--pairs`` pairs of retrained models of a
finished study (``subset{2k}_seed0`` and ``subset{2k+1}_seed0``) and the first ``--samples`` generated samples, the
loss and ELBO of both models are computed ``--reps`` times with independent draws (``measure.seed`` 1000 + rep,
through :func:`diffattr.measure.measure_samples`, the oracles' own code), and the standard deviation of the
difference over the repetitions is reported (median over samples and pairs), for each scheme:

- ``uniform:N``: N draws with t uniform (the paper's estimator; ``measure.t_importance_offset: null``);
- ``importance:C:N``: N draws with t drawn with probability ∝ 1/(t + C), each term weighted by 1/(T p_t).

    python bench/oracle_variance.py [--study results/quickstart --configfile ...] [--schemes uniform:256 uniform:128 importance:20:128]

A scheme with half the standard deviation of another needs a quarter of its draws for the same precision.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from diffattr.config import deep_merge, load_config
from diffattr.diffusion import Schedule
from diffattr.measure import measure_samples
from diffattr.models import load_model
from diffattr.sampling import read_samples


def parse_scheme(text: str) -> tuple[float | None, int]:
    """``uniform:N`` -> (None, N); ``importance:C:N`` -> (C, N)."""
    parts = text.split(":")
    if parts[0] == "uniform" and len(parts) == 2:
        return None, int(parts[1])
    if parts[0] == "importance" and len(parts) == 3:
        return float(parts[1]), int(parts[2])
    raise SystemExit(f"--schemes {text!r}: expected uniform:N or importance:C:N")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", type=Path, default=Path("results/quickstart"))
    ap.add_argument("--configfile", nargs="*", default=[], help="the study's experiment (and overlays), as Snakemake")
    ap.add_argument("--schemes", nargs="+", default=["uniform:256", "uniform:128", "importance:5:128",
                                                      "importance:20:128", "importance:50:128"])
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    schemes = [(s, *parse_scheme(s)) for s in args.schemes]
    merged: dict = {}
    for f in args.configfile:
        merged = deep_merge(merged, yaml.safe_load(Path(f).read_text()) or {})
    cfg = load_config("config.yaml", merged)
    schedule = Schedule.from_config(cfg["diffusion"])
    samples = torch.from_numpy(read_samples(args.study / "samples/samples.h5")["samples"])[: args.samples]
    pairs = [(f"subset{2 * k}_seed0", f"subset{2 * k + 1}_seed0") for k in range(args.pairs)]
    print(f"{args.study}: {len(pairs)} model pairs x {len(samples)} samples, {args.reps} repetitions per scheme")
    spread: dict[str, dict[str, list[np.ndarray]]] = {s: {"loss": [], "elbo": []} for s, _, _ in schemes}
    seconds = dict.fromkeys(spread, 0.0)
    for pair in pairs:
        models = [load_model(args.study / "models" / m) for m in pair]
        for name, offset, n in schemes:
            t0 = time.perf_counter()
            diffs = {"loss": [], "elbo": []}
            for rep in range(args.reps):
                measure = {**cfg["measure"], "measurements": ["loss", "elbo"], "mc_samples": n,
                           "t_importance_offset": offset, "seed": 1000 + rep, "common_random_numbers": True}
                a, b = (measure_samples(m, schedule, samples, measure, progress=False) for m in models)
                for q in diffs:
                    diffs[q].append(b[q] - a[q])
            for q in diffs:
                spread[name][q].append(np.std(diffs[q], axis=0))  # [samples]
            seconds[name] += time.perf_counter() - t0
    base = {q: float(np.median(spread[schemes[0][0]][q])) for q in ("loss", "elbo")}
    print(f"{'scheme':<20} {'loss: s.d. of a difference':>28} {'ELBO: s.d. of a difference':>28} {'s per model':>12}")
    for name, _, _ in schemes:
        cells = []
        for q in ("loss", "elbo"):
            sd = float(np.median(spread[name][q]))
            cells.append(f"{sd:>10.4f} ({sd / base[q]:.2f}x)")
        per_model = seconds[name] / (len(pairs) * 2 * args.reps)
        print(f"{name:<20} {cells[0]:>28} {cells[1]:>28} {per_model:>12.3f}")
    print(f"(median over samples and pairs; ratios to {schemes[0][0]}; seconds per model and repetition for "
          f"{len(samples)} samples)")


if __name__ == "__main__":
    main()
