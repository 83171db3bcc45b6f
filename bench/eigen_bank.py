"""Would a K-FAC query bank kept in the Kronecker eigenbasis win? (issue #17, item 1)

Today the bank holds one int8 row per (query, damping): the preconditioned gradient (G + λI)⁻¹q for every λ. The
alternative keeps one row per query, the rotated gradient q̃ = Qᵀq, rotates every training gradient into the same
basis, and applies the damping as a diagonal at scoring time: τ_λ = Σ_p q̃_p g̃_p / (e_p + λ). The bank shrinks by
the number of dampings; the price is one rotation per training gradient (per variant), and int8 rounding of q̃
before the per-λ rescale instead of after it.

This script scores a study's queries both ways against the exact float64 scores and prints, per damping, the
Spearman correlation of each with the exact ones, the bank bytes, and the wall time of each scoring step.

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
from diffattr.gradients.compress import dequantize_int8, quantize_int8
from diffattr.queries import parse_query
from diffattr.scores.base import GradientArgs, GradientInputs


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
    dampings, sizes = list(cfg["influence"]["dampings"]), curv.sizes
    q = inputs.query_gradients(parse_query(args.query), 0, inputs.samples.shape[0], gargs)
    n = inputs.images.shape[0]
    g = torch.cat([inputs.training_gradients(torch.arange(s, min(s + gargs.batch_size, n)), gargs)
                   for s in range(0, n, gargs.batch_size)])
    exact = torch.stack([r.double() @ g.double().T for r in curv.precondition(q.double(), dampings)])

    t0 = time.perf_counter()  # per-damping bank: precondition, quantise, dot
    rows = curv.precondition(q, dampings).reshape(-1, q.shape[1])
    qi, qs = quantize_int8(rows, sizes)
    per_damping = (dequantize_int8(qi, qs, sizes) @ g.T).reshape(len(dampings), q.shape[0], n)
    t_damp, bytes_damp = time.perf_counter() - t0, qi.numel() + qs.numel() * 4

    t0 = time.perf_counter()  # eigenbasis bank: rotate queries and training gradients, quantise, rescale per λ
    qt, gt = curv.rotate(q.double()).float(), curv.rotate(g.double()).float()
    ei, es = quantize_int8(qt, sizes)
    qd, e = dequantize_int8(ei, es, sizes), curv.eigenvalues().float()
    eigen = torch.stack([(qd / (e + lam)) @ gt.T for lam in dampings])
    t_eigen, bytes_eigen = time.perf_counter() - t0, ei.numel() + es.numel() * 4

    print(f"{args.study} {args.variant} {args.query}: {q.shape[0]} queries x {n} training examples, P = {q.shape[1]}")
    print(f"bank bytes: per damping {bytes_damp:,}  eigenbasis {bytes_eigen:,}  ({bytes_damp / bytes_eigen:.1f}x)")
    print(f"scoring time: per damping {t_damp:.2f} s  eigenbasis {t_eigen:.2f} s (incl. rotating the training "
          "gradients)")
    print(f"{'damping':>9} {'Spearman per-damping int8':>26} {'Spearman eigenbasis int8':>25}")
    for d, lam in enumerate(dampings):
        ref = exact[d].flatten().numpy()
        print(f"{lam:>9.0e} {spearmanr(ref, per_damping[d].flatten().numpy())[0]:>26.4f} "
              f"{spearmanr(ref, eigen[d].flatten().numpy())[0]:>25.4f}")


if __name__ == "__main__":
    main()
