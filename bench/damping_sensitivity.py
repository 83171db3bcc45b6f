"""How far K-FAC influence at each damping can be trusted numerically: scores under float32-sized perturbations.

Perturbs the query (measurement) gradients by a relative ``--eps`` (default 1e-6, the size of float32 rounding
differences between two correct implementations, e.g. vectorised against per-sample autograd), scores both
with the same training gradients, and prints per damping: the largest score change (relative to the largest
score), the Spearman correlation of the two score vectors, the LDS of both and the share of K-FAC eigenvalues
below the damping. Dampings at which the scores move are dominated by rounding in near-null eigendirections.

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
from diffattr.scores.influence import stream_scores
from diffattr.scores.inputs import AttributionInputs, gradient_seeds


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
    inputs = AttributionInputs.load(cfg, res / "models/full", res / "data/train.h5", res / "samples/samples.h5", device)
    seeds, mc, bs = gradient_seeds(icfg), icfg["gradient_mc_samples"], icfg["batch_size"]
    curv = load_curvature(res / "curvature" / f"{args.variant}.h5")
    dampings = icfg["dampings"]

    q = measurement_gradients(inputs.wrapper, inputs.samples, args.measurement, inputs.schedule, mc, seeds["query"],
                              batch_size=bs)
    noise = torch.randn(q.shape, generator=torch.Generator().manual_seed(0)).to(q)
    perturbed = q + args.eps * noise * q.norm(dim=1, keepdim=True) / noise.norm(dim=1, keepdim=True)
    bank = QueryBank("none")
    bank.add(("scores", "original"), curv.precondition(q, dampings))
    bank.add(("scores", "perturbed"), curv.precondition(perturbed, dampings))
    hflip = bool(cfg["train"]["hflip"])
    out = stream_scores(
        bank,
        lambda x, idx: training_gradients(inputs.wrapper, x, idx, inputs.schedule, mc, seeds["train"], hflip),
        inputs.images, bs, progress=False,
    )
    a, b = out[("scores", "original")], out[("scores", "perturbed")]

    masks = read_h5(res / "data/subsets.h5")["masks"]
    meas = read_h5(res / "measurements/measurements.h5")
    actual = actual_by_subset(meas[args.measurement], meas["subset"], meas["seed_index"], masks.shape[0])
    lam = curv.eigenvalues().numpy()
    print(f"{args.variant}, {args.measurement} scores; query gradients perturbed by a relative {args.eps:g}")
    print(f"{'damping':>8} {'eig < damping':>13} {'max |Δτ| / max |τ|':>19} {'Spearman':>9} {'LDS':>7} {'LDS pert.':>9}")
    for k, d in enumerate(dampings):
        change = np.abs(a[k] - b[k]).max() / np.abs(a[k]).max()
        rho = np.mean([spearmanr(a[k, i], b[k, i]).statistic for i in range(a.shape[1])])
        print(f"{d:>8.0e} {np.mean(lam < d):>13.1%} {change:>19.1e} {rho:>9.4f} "
              f"{lds(a[k], masks, actual).mean:>7.1%} {lds(b[k], masks, actual).mean:>9.1%}")


if __name__ == "__main__":
    main()
