"""Wall-time breakdown of K-FAC influence on the quickstart model, against the bare per-example gradient cost.

Stages: K-FAC fit (curvlinops, MC Fisher, expand), float64 eigendecomposition, query (measurement) gradients,
training gradients + scoring (every query, every damping, int8 queries). The lower bound is the bare computation
of all per-example training-loss gradients (same MC draws); target: total / bound <= 1.5.

    python bench/influence.py [--config config.yaml] [--model results/quickstart/models/full]

Needs a trained model (``make run`` or ``snakemake --cores all results/quickstart/models/full/config.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings
from pathlib import Path

import torch

from diffattr.config import load_config
from diffattr.curvature import Variant, build_operator, curvature_from_operator
from diffattr.gradients import measurement_gradients, training_gradients
from diffattr.runtime import select_device
from diffattr.scores import QueryBank
from diffattr.scores.influence import stream_scores
from diffattr.scores.inputs import AttributionInputs, gradient_seeds


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--variant", default="kfac_mc_expand")
    args = ap.parse_args()
    cfg = load_config(args.config)
    res = Path("results") / cfg["experiment"]
    device = select_device(cfg["device"])
    icfg = cfg["influence"]
    inputs = AttributionInputs.load(cfg, res / "models/full", res / "data/train.h5", res / "samples/samples.h5", device)
    wrapper, schedule, images, samples = inputs.wrapper, inputs.schedule, inputs.images, inputs.samples
    seeds = gradient_seeds(icfg)
    n, bs, mc = images.shape[0], icfg["batch_size"], icfg["gradient_mc_samples"]
    hflip = bool(cfg["train"]["hflip"])
    t: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(name: str):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        yield
        if device == "cuda":
            torch.cuda.synchronize()
        t[name] = time.perf_counter() - t0

    def grad_fn(x, idx):
        return training_gradients(wrapper, x, idx, schedule, mc, seeds["train"], hflip)

    with timed("bare per-example gradients (bound)"):
        for start in range(0, n, bs):
            idx = torch.arange(start, min(start + bs, n))
            grad_fn(images[idx], idx)

    variant = Variant.from_name(args.variant)
    with timed("fit (K-FAC factors)"):
        op, n_data = build_operator(wrapper, images, schedule, variant, icfg["curvature_mc_samples"], bs,
                                    icfg["seed"], hflip, device, progress=False)
        op.compute_kronecker_factors()
    with timed("eigendecomposition"):  # factors are cached in the operator: this only decomposes them
        curv = curvature_from_operator(op, wrapper, n_data, variant, {})
    with timed("query gradients + preconditioning"):
        queries = {m: measurement_gradients(wrapper, samples, m, schedule, mc, seeds["query"], batch_size=bs)
                   for m in icfg["measurements"] if m in ("loss", "elbo")}
        bank = QueryBank(icfg["query_compression"])
        for m, q in queries.items():
            bank.add((variant.name, m), curv.precondition(q, icfg["dampings"]))
    with timed("training gradients + scoring"):
        stream_scores(bank, grad_fn, images, bs, progress=False)

    bound = t["bare per-example gradients (bound)"]
    total = sum(v for k, v in t.items() if "bound" not in k)
    print(f"device: {device}, threads {torch.get_num_threads()}; N={n} training examples, {len(samples)} samples, "
          f"{mc} MC draws per gradient, {icfg['curvature_mc_samples']} per K-FAC example, "
          f"{len(icfg['dampings'])} dampings, {bank.n_rows} query rows ({icfg['query_compression']}); {variant.name}")
    print(f"{'stage':<36} {'seconds':>8} {'/ bound':>8}")
    for k, v in t.items():
        print(f"{k:<36} {v:>8.2f} {v / bound:>8.2f}")
    print(f"{'total (all but the bound)':<36} {total:>8.2f} {total / bound:>8.2f}   target <= 1.5")


if __name__ == "__main__":
    main()
