"""Wall-time breakdown of K-FAC influence on the quickstart model, against the bare per-example gradient cost.

Stages: K-FAC fit (curvlinops, MC Fisher, expand), float64 eigendecomposition, query (measurement) gradients,
training gradients + scoring (every query, every damping, int8 queries). The lower bound is the bare computation
of all per-example training-loss gradients (same MC draws); target: total / bound <= 1.5.

Two reference lines explain the fit: the plain forward + backward pass over the fit's data (what curvlinops'
pass costs without its factor hooks; the fit can never be cheaper), the ratio the total would have if the
factors were free, and the FLOPs per (example, draw) of the forward pass against those of the K-FAC input
factors (K-FAC expand: (kh·kw·C_in)² per output location of a conv layer).

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
from torch import nn

from diffattr.config import load_config
from diffattr.curvature import Variant, build_operator, curvature_from_operator, kfac_parameters
from diffattr.curvature.data import KFAC_LAYERS, CurvatureData, FlatEps
from diffattr.gradients import measurement_gradients, training_gradients
from diffattr.runtime import select_device
from diffattr.scores import QueryBank
from diffattr.scores.bank import stream_scores
from diffattr.scores.base import GradientArgs, GradientInputs
from diffattr.scores.influence import QUERY_BANKS, KFACPreconditioner


def flops_per_row(wrapper: FlatEps, x: torch.Tensor, t: torch.Tensor, approx: str) -> tuple[float, float]:
    """FLOPs of one forward pass of the K-FAC layers and of their input-factor updates, for one (example, draw)."""
    fwd, cov = [0.0], [0.0]

    def hook(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        w = module.weight
        d_in, d_out = w[0].numel(), w.shape[0]
        locations = output[0, 0].numel() if isinstance(module, nn.Conv2d) else output[0].numel() // d_out
        fwd[0] += 2 * locations * d_in * d_out
        cov[0] += 2 * (locations if approx == "expand" else 1) * d_in * d_in

    handles = [m.register_forward_hook(hook) for m in wrapper.modules() if isinstance(m, KFAC_LAYERS)]
    with torch.no_grad():
        wrapper({"x": x[:1], "t": t[:1]})
    for h in handles:
        h.remove()
    return fwd[0], cov[0]


def forward_backward(wrapper: FlatEps, data: CurvatureData) -> None:
    """curvlinops' MC-Fisher pass without its hooks: forward, sampled targets, gradient w.r.t. the K-FAC parameters."""
    params = [p for _, p in kfac_parameters(wrapper)]
    gen = torch.Generator(device=next(wrapper.parameters()).device).manual_seed(0)
    for X, _ in data:
        out = wrapper(X)
        y = out.detach() + torch.randn(out.shape, generator=gen, device=out.device) * 0.5**0.5
        torch.autograd.grad(nn.functional.mse_loss(out, y, reduction="sum"), params)


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--variant", default="kfac_mc_expand")
    ap.add_argument("--repeats", type=int, default=2, help="run every stage this often; report the fastest")
    ap.add_argument("--query-bank", default=None, choices=QUERY_BANKS, help="default: the config's influence.query_bank")
    args = ap.parse_args()
    cfg = load_config(args.config)
    res = Path("results") / cfg["experiment"]
    device = select_device(cfg["device"])
    icfg = cfg["influence"]
    query_bank = args.query_bank or icfg["query_bank"]
    inputs = GradientInputs.load(res / "models/full", res / "data/train.h5", res / "samples/samples.h5", cfg["diffusion"],
                                 device)
    wrapper, schedule, images, samples = inputs.wrapper, inputs.schedule, inputs.images, inputs.samples
    seeds = GradientArgs.from_sections(icfg, cfg["train"]["hflip"]).seeds
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
        t[name] = min(t.get(name, float("inf")), time.perf_counter() - t0)

    def grad_fn(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return training_gradients(wrapper, x, idx, schedule, mc, seeds["train"], hflip)

    variant = Variant.from_name(args.variant)
    for _ in range(args.repeats):
        with timed("bare per-example gradients (bound)"):
            for start in range(0, n, bs):
                idx = torch.arange(start, min(start + bs, n))
                grad_fn(images[idx], idx)

        with timed("fit (K-FAC factors)"):
            op, scale = build_operator(wrapper, images, schedule, variant, icfg["curvature_mc_samples"], bs,
                                        icfg["seed"], hflip, device, progress=False)
            op.compute_kronecker_factors()
        with timed("fit forward+backward alone (reference)"):
            forward_backward(wrapper, CurvatureData(images, schedule, icfg["curvature_mc_samples"], bs, icfg["seed"],
                                                    hflip, device))
        with timed("eigendecomposition"):  # factors are cached in the operator: this only decomposes them
            curv = curvature_from_operator(op, wrapper, scale, variant, {})
        with timed("query gradients + preconditioning"):
            queries = {m: measurement_gradients(wrapper, samples, m, schedule, mc, seeds["query"], batch_size=bs)
                       for m in icfg["measurements"] if m in ("loss", "elbo")}
            pre = KFACPreconditioner(curv, icfg["dampings"], icfg["query_compression"], bank=query_bank)
            bank = QueryBank(icfg["query_compression"], pre.group_sizes)
            for m, q in queries.items():
                bank.add((variant.name, m), pre.precondition(q), pre.diagonal)
        with timed("training gradients + scoring"):
            stream_scores(bank, lambda idx: grad_fn(images[idx], idx), n, bs, progress=False)

    bound = t["bare per-example gradients (bound)"]
    total = sum(v for k, v in t.items() if "bound" not in k and "reference" not in k)
    free = total - t["fit (K-FAC factors)"] + t["fit forward+backward alone (reference)"]
    x0 = images[:1]
    fwd, cov = flops_per_row(wrapper, x0, torch.zeros(1, dtype=torch.long, device=x0.device), variant.approx.value)
    print(f"device: {device}, threads {torch.get_num_threads()}; N={n} training examples, {len(samples)} samples, "
          f"{mc} MC draws per gradient, {icfg['curvature_mc_samples']} per K-FAC example, "
          f"{len(icfg['dampings'])} dampings, {bank.n_rows} query rows ({icfg['query_compression']}, {query_bank}); {variant.name}")
    print(f"{'stage':<40} {'seconds':>8} {'/ bound':>8}")
    for k, v in t.items():
        print(f"{k:<40} {v:>8.2f} {v / bound:>8.2f}")
    print(f"{'total (all but bound and reference)':<40} {total:>8.2f} {total / bound:>8.2f}   target <= 1.5")
    print(f"{'total if the factors were free':<40} {free:>8.2f} {free / bound:>8.2f}")
    print(f"per (example, draw): forward {fwd / 1e6:.1f} MFLOP, K-FAC input factors ({variant.approx.value}) "
          f"{cov / 1e6:.1f} MFLOP ({cov / fwd:.1f}x the forward)")


if __name__ == "__main__":
    main()
