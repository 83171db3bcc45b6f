"""How noisy is a loss/ELBO oracle where the LDS reads it: the Monte-Carlo spread of the *difference* between two
retrained models' measurements of one sample, for several ways of drawing t.

With common random numbers every model is measured on the same (t, ε) draws, so the noise left in a difference is
what the draws do not cancel. This bench measures it directly: for ``--pairs`` pairs of retrained models of a
finished study (``subset{2k}_seed0`` and ``subset{2k+1}_seed0``) and the first ``--samples`` generated samples, the
loss and ELBO of both models are computed ``--reps`` times with independent draws (``measure.seed`` 1000 + rep,
through :func:`diffattr.measure.measure_samples`, the oracles' own code), and the standard deviation of the
difference over the repetitions is reported (median over samples and pairs), for each scheme:

- ``uniform:N``: N draws with t uniform (the paper's estimator; ``measure.t_importance_offset: null``);
- ``importance:C:N``: N draws with t drawn with probability ∝ 1/(t + C), each term weighted by 1/(T p_t);
- ``steps:COUNTS[:anti=T1,T2,...]``: the timestep losses (``measure.timesteps``), COUNTS ε draws at each timestep
  (one number, or one per timestep separated by commas), antithetic pairs at the timesteps listed after ``anti=``
  (``measure.timestep_mc_samples`` and ``measure.timestep_antithetic``); reported per timestep.

    python bench/oracle_variance.py [--study results/quickstart --configfile ...] [--schemes uniform:256 uniform:128 importance:20:128]
    python bench/oracle_variance.py --schemes steps:48 steps:48:anti=1,10,50 steps:8,12,24,48,48,48,48:anti=1,10,50

A scheme with half the standard deviation of another needs a quarter of its draws for the same precision. Ratios
are to the first scheme of the same kind (loss/ELBO, timestep losses).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from diffattr.config import deep_merge, load_config, timestep_draw_counts, validate_config
from diffattr.diffusion import Schedule
from diffattr.measure import measure_samples
from diffattr.models import load_model
from diffattr.sampling import read_samples


def parse_scheme(text: str) -> dict:
    """A scheme's ``measure`` settings: ``uniform:N``, ``importance:C:N`` (loss and ELBO) or
    ``steps:COUNTS[:anti=T1,T2]`` (timestep losses)."""
    parts = text.split(":")
    try:
        if parts[0] == "uniform" and len(parts) == 2:
            return {"measurements": ["loss", "elbo"], "mc_samples": int(parts[1]), "t_importance_offset": None}
        if parts[0] == "importance" and len(parts) == 3:
            return {"measurements": ["loss", "elbo"], "mc_samples": int(parts[2]),
                    "t_importance_offset": float(parts[1])}
        if parts[0] == "steps" and len(parts) in (2, 3) and (len(parts) == 2 or parts[2].startswith("anti=")):
            counts = [int(c) for c in parts[1].split(",")]
            anti = [int(t) for t in parts[2][5:].split(",")] if len(parts) == 3 else []
            return {"measurements": ["timestep_loss"], "timestep_mc_samples": counts[0] if len(counts) == 1 else counts,
                    "timestep_antithetic": anti}
    except ValueError:
        pass
    raise SystemExit(f"--schemes {text!r}: expected uniform:N, importance:C:N or steps:COUNTS[:anti=T1,T2,...]")


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
    schemes = {s: parse_scheme(s) for s in args.schemes}
    merged: dict = {}
    for f in args.configfile:
        merged = deep_merge(merged, yaml.safe_load(Path(f).read_text()) or {})
    cfg = load_config("config.yaml", merged)
    for name, scheme in schemes.items():  # the config's own checks (a timestep count per timestep, even pairs)
        draws = {k: v for k, v in scheme.items() if k != "measurements"}
        validate_config(deep_merge(cfg, {"measure": draws}), f"--schemes {name}")
    schedule = Schedule.from_config(cfg["diffusion"])
    samples = torch.from_numpy(read_samples(args.study / "samples/samples.h5")["samples"])[: args.samples]
    pairs = [(f"subset{2 * k}_seed0", f"subset{2 * k + 1}_seed0") for k in range(args.pairs)]
    print(f"{args.study}: {len(pairs)} model pairs x {len(samples)} samples, {args.reps} repetitions per scheme")
    spread: dict[str, dict[str, list[np.ndarray]]] = {s: {} for s in schemes}
    seconds = dict.fromkeys(schemes, 0.0)
    for pair in pairs:
        models = [load_model(args.study / "models" / m) for m in pair]
        for name, scheme in schemes.items():
            t0 = time.perf_counter()
            diffs: dict[str, list[np.ndarray]] = {}
            for rep in range(args.reps):
                measure = {**cfg["measure"], **scheme, "seed": 1000 + rep, "common_random_numbers": True}
                a, b = (measure_samples(m, schedule, samples, measure, progress=False) for m in models)
                for q in scheme["measurements"]:
                    diffs.setdefault(q, []).append(b[q] - a[q])
            for q, d in diffs.items():
                spread[name].setdefault(q, []).append(np.std(d, axis=0))  # [samples] or [samples, timesteps]
            seconds[name] += time.perf_counter() - t0
    per_model = {name: seconds[name] / (len(pairs) * 2 * args.reps) for name in schemes}
    loss_schemes = [n for n in schemes if "loss" in schemes[n]["measurements"]]
    if loss_schemes:
        base = {q: float(np.median(spread[loss_schemes[0]][q])) for q in ("loss", "elbo")}
        print(f"{'scheme':<20} {'loss: s.d. of a difference':>28} {'ELBO: s.d. of a difference':>28} {'s per model':>12}")
        for name in loss_schemes:
            cells = []
            for q in ("loss", "elbo"):
                sd = float(np.median(spread[name][q]))
                cells.append(f"{sd:>10.4f} ({sd / base[q]:.2f}x)")
            print(f"{name:<20} {cells[0]:>28} {cells[1]:>28} {per_model[name]:>12.3f}")
    step_schemes = [n for n in schemes if n not in loss_schemes]
    if step_schemes:
        steps = cfg["measure"]["timesteps"]
        base_sd = np.median(np.concatenate(spread[step_schemes[0]]["timestep_loss"]), axis=0)
        print("timestep losses: s.d. of a difference at t = " + ", ".join(map(str, steps)) + " (ratio to "
              f"{step_schemes[0]}), draws per sample, s per model")
        for name in step_schemes:
            sd = np.median(np.concatenate(spread[name]["timestep_loss"]), axis=0)
            cells = " ".join(f"{v:.4f} ({v / b:.2f}x)" for v, b in zip(sd, base_sd, strict=True))
            draws = sum(timestep_draw_counts({**cfg["measure"], **schemes[name]}))
            print(f"{name} {cells} {draws} {per_model[name]:.3f}")
    print(f"(median over samples and pairs; ratios to the first scheme of each kind; seconds per model and repetition "
          f"for {len(samples)} samples)")


if __name__ == "__main__":
    main()
