"""The K-FAC query bank per damping against the bank in the Kronecker eigenbasis (``influence.query_bank``).

The per-damping bank holds one int8 row per (query, damping): the preconditioned gradient (G + λI)⁻¹q for every λ.
The eigenbasis bank keeps one row per query, the rotated gradient q̃ = Qᵀq, rotates every training gradient into the
same basis, and applies the damping as a diagonal at scoring time: τ_λ = Σ_p q̃_p g̃_p / (e_p + λ). It is smaller by
the number of dampings; the price is one rotation per training gradient (per variant), and int8 rounding of q̃
before the per-λ rescale instead of after it.

This script scores a study's queries both ways, through the scorer's own code (``influence_scores``), and prints,
per damping, the Spearman correlation of each with the exact float64 scores, the bank bytes, and the wall time of
each scoring step (the training gradients are computed once beforehand and shared).

    python bench/eigen_bank.py [--study results/quickstart] [--variant kfac_mc_expand] [--query loss]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from diffattr.config import load_config
from diffattr.curvature import load_curvature
from diffattr.queries import parse_query
from diffattr.scores import QueryBank, influence_scores
from diffattr.scores.base import GradientArgs, GradientInputs
from diffattr.scores.influence import QUERY_BANKS, KFACPreconditioner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="results/quickstart")
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--variant", default="kfac_mc_expand")
    ap.add_argument("--query", default="loss")
    args = ap.parse_args()
    study, cfg = Path(args.study), load_config(args.config)
    inputs = GradientInputs.load(study / "models/full", study / "data/train.h5", study / "samples/samples.h5",
                                 cfg["diffusion"])
    gargs = GradientArgs.from_sections(cfg["influence"], cfg["train"]["hflip"])
    curv = load_curvature(study / f"curvature/{args.variant}.h5")
    dampings, compression = list(cfg["influence"]["dampings"]), cfg["influence"]["query_compression"]
    q = inputs.query_gradients(parse_query(args.query), 0, inputs.samples.shape[0], gargs)
    n = inputs.images.shape[0]
    g = torch.cat([inputs.training_gradients(torch.arange(s, min(s + gargs.batch_size, n)), gargs)
                   for s in range(0, n, gargs.batch_size)])
    exact = torch.stack([r.double() @ g.double().T for r in curv.precondition(q.double(), dampings)])

    scores, seconds, nbytes = {}, {}, {}
    for bank in QUERY_BANKS:
        t0 = time.perf_counter()
        scores[bank] = influence_scores(curv, q, g, dampings, compression, bank)
        seconds[bank] = time.perf_counter() - t0
        pre = KFACPreconditioner(curv, dampings, compression, bank=bank)
        rows = QueryBank(compression, pre.group_sizes)
        rows.add(("m", "q"), pre.precondition(q), pre.diagonal)
        nbytes[bank] = rows.nbytes()

    a, b = QUERY_BANKS
    print(f"{args.study} {args.variant} {args.query}: {q.shape[0]} queries x {n} training examples, P = {q.shape[1]}, "
          f"{compression}, {torch.get_num_threads()} threads")
    print(f"bank bytes: {a} {nbytes[a]:,}  {b} {nbytes[b]:,}  ({nbytes[a] / nbytes[b]:.1f}x)")
    print(f"scoring time incl. preconditioning / rotating: {a} {seconds[a]:.2f} s  {b} {seconds[b]:.2f} s")
    print(f"{'damping':>9} {'Spearman ' + a:>22} {'Spearman ' + b:>22}")
    for d, lam in enumerate(dampings):
        ref = exact[d].flatten().numpy()
        print(f"{lam:>9.0e} {spearmanr(ref, scores[a][d].flatten().numpy())[0]:>22.5f} "
              f"{spearmanr(ref, scores[b][d].flatten().numpy())[0]:>22.5f}")


if __name__ == "__main__":
    main()
