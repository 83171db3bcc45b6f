"""What would a smaller study tell? The headline LDS of a finished study recomputed on fewer subsets and samples.

Rebalancing a study (issue #17: the quickstart's subsets, seeds and samples against its run time) needs to know how
the standard error of the LDS moves with M (subsets) and S (samples). This bench takes a finished study, draws
``--draws`` random choices of M' of its M subsets (and S' of its S samples), and recomputes the loss LDS of each
method at its best damping (from ``metrics/lds.json``) and of the exact-retraining oracle, with the pipeline's own
:mod:`diffattr.evaluate.lds`. It prints the mean LDS over the draws, its spread between draws and the mean standard
error over samples. For S' above the study's S the standard error is extrapolated as 1/√S' (the samples are
independent; the LDS per sample scatters by the same amount), and said so.

    python bench/lds_budget.py --study results/quickstart --subsets 16 12 8 --samples 80 96

Caveat: the M' subsets are drawn from the study's M, so the spread between draws understates that of independent
studies of M' subsets.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from diffattr.data import read_subsets
from diffattr.evaluate.lds import actual_by_subset, lds, oracle_lds
from diffattr.measure import read_measurements
from diffattr.scores.io import damping_index, read_scores, target_sign


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", type=Path, default=Path("results/quickstart"))
    ap.add_argument("--subsets", type=int, nargs="+", default=[16, 12, 8], help="M' values")
    ap.add_argument("--samples", type=int, nargs="+", default=[80, 96], help="S' values")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    meas = read_measurements(args.study / "measurements/measurements.h5")
    masks = read_subsets(args.study / "data/subsets.h5")["masks"]
    M = masks.shape[0]
    actual = actual_by_subset(meas["loss"], meas["subset"], meas["seed_index"], M)
    S = actual.shape[2]
    for m in args.subsets:
        if not 3 <= m <= M:
            raise SystemExit(f"--subsets {m}: the study has {M} subsets; choose 3..{M}")
    summary = json.loads((args.study / "metrics/lds.json").read_text())
    rows = [(r["method"], r["best"]["damping"]) for r in summary["results"] if r["scores"] == r["target"] == "loss"]
    rng = np.random.default_rng(args.seed)
    print(f"{args.study}: M = {M} subsets x K = {actual.shape[1]} seeds, S = {S} samples; loss LDS (%) at each "
          f"method's best damping, {args.draws} draws of M' subsets and S' samples")
    print(f"{'method':24s} {'M':>3s} {'S':>4s} {'mean LDS':>9s} {'sd over draws':>14s} {'s.e. over samples':>18s}")

    def report(name: str, lds_of) -> None:
        for m in args.subsets:
            for s in args.samples:
                res = np.array([(r.mean, r.se) for r in (
                    lds_of(rng.choice(M, m, replace=False), rng.choice(S, min(s, S), replace=False))
                    for _ in range(args.draws))])
                se = res[:, 1].mean() * np.sqrt(min(s, S) / s)
                note = f" (from S = {S} as 1/sqrt(S'))" if s > S else ""
                print(f"{name:24s} {m:3d} {s:4d} {res[:, 0].mean() * 100:9.1f} {res[:, 0].std() * 100:14.1f} "
                      f"{se * 100:18.2f}{note}")

    for method, damping in rows:
        art = read_scores(args.study / f"scores/{method}/loss.h5")
        scores = art["scores"][damping_index(art["dampings"], damping)] * target_sign(art, "loss")
        report(method, lambda ms, ss, sc=scores: lds(sc[ss], masks[ms], actual[ms][:, :, ss]))
    report("oracle", lambda ms, ss: oracle_lds(actual[ms][:, :, ss]))


if __name__ == "__main__":
    main()
