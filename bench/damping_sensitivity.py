"""How far K-FAC influence at each damping can be trusted numerically: rounding and int8 compression.

Per damping, against the unquantised scores: the largest change (relative to the largest score) when the query
(measurement) gradients are perturbed by a relative ``--eps`` (default 1e-6, the size of float32 rounding
differences between two correct implementations), the Spearman correlation of int8-compressed scores with one
scale per parameter tensor (what the pipeline stores) and with one scale per row, the LDS of each, and the share
of K-FAC eigenvalues below the damping.

    python bench/damping_sensitivity.py [--config config.yaml] [--variant kfac_mc_expand] [--measurement loss]

Needs the quickstart study's model, subsets, measurements and curvature (``make run``).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from diffattr.config import load_config
from diffattr.curvature import load_curvature
from diffattr.evaluate.lds import actual_by_subset, lds
from diffattr.gradients import measurement_gradients, training_gradients
from diffattr.io import read_h5
from diffattr.runtime import select_device
from diffattr.scores import QueryBank
from diffattr.scores.base import GradientArgs, GradientInputs


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--variant", default="kfac_mc_expand")
    ap.add_argument("--measurement", default="loss", choices=["loss", "elbo"])
    ap.add_argument("--eps", type=float, default=1e-6, help="relative size of the query perturbation")
    args = ap.parse_args()
    cfg = load_config(args.config)
    res = Path("results") / cfg["experiment"]
    icfg = cfg["influence"]
    device = select_device(cfg["device"])
    inputs = GradientInputs.load(res / "models/full", res / "data/train.h5", res / "samples/samples.h5", cfg["diffusion"],
                                 device)
    seeds, mc, bs = GradientArgs.from_sections(icfg, cfg["train"]["hflip"]).seeds, icfg["gradient_mc_samples"], icfg["batch_size"]
    curv = load_curvature(res / "curvature" / f"{args.variant}.h5")
    dampings = icfg["dampings"]

    q = measurement_gradients(inputs.wrapper, inputs.samples, args.measurement, inputs.schedule, mc, seeds["query"],
                              batch_size=bs)
    noise = torch.randn(q.shape, generator=torch.Generator().manual_seed(0)).to(q)
    perturbed = q + args.eps * noise * q.norm(dim=1, keepdim=True) / noise.norm(dim=1, keepdim=True)
    hflip = bool(cfg["train"]["hflip"])
    train = torch.cat([
        training_gradients(inputs.wrapper, inputs.images[i : i + bs], torch.arange(i, min(i + bs, len(inputs.images))),
                           inputs.schedule, mc, seeds["train"], hflip)
        for i in range(0, len(inputs.images), bs)
    ])
    scores = {}
    for name, rows, compression, groups in [
        ("none", q, "none", None), ("perturbed", perturbed, "none", None),
        ("int8", q, "int8", curv.sizes), ("int8 per row", q, "int8", None),
    ]:
        bank = QueryBank(compression, groups)
        bank.add(("scores", name), curv.precondition(rows, dampings))
        scores[name] = bank.scores(train)[("scores", name)].numpy()

    masks = read_h5(res / "data/subsets.h5")["masks"]
    meas = read_h5(res / "measurements/measurements.h5")
    actual = actual_by_subset(meas[args.measurement], meas["subset"], meas["seed_index"], masks.shape[0])
    lam = curv.eigenvalues().numpy()
    a = scores["none"]
    print(f"{args.variant}, {args.measurement} scores against unquantised ones; perturbation {args.eps:g}")
    print(f"{'damping':>8} {'eig<damping':>11} {'perturbed: max|Δτ|/max|τ|':>26} "
          f"{'Spearman: int8':>14} {'int8/row':>9}   LDS: {'none':>6} {'int8':>6} {'int8/row':>8}")
    for k, d in enumerate(dampings):
        change = np.abs(a[k] - scores["perturbed"][k]).max() / np.abs(a[k]).max()
        rho = {n: np.mean([spearmanr(a[k, i], scores[n][k, i]).statistic for i in range(a.shape[1])])
               for n in ("int8", "int8 per row")}
        lds_of = {n: lds(scores[n][k], masks, actual).mean for n in ("none", "int8", "int8 per row")}
        print(f"{d:>8.0e} {np.mean(lam < d):>11.1%} {change:>26.1e} {rho['int8']:>14.4f} {rho['int8 per row']:>9.4f}"
              f"        {lds_of['none']:>6.1%} {lds_of['int8']:>6.1%} {lds_of['int8 per row']:>8.1%}")


if __name__ == "__main__":
    main()
