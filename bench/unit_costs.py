"""Unit costs of the pipeline's GPU work for one U-Net preset on the device found here; `diffattr.cost` turns
them into per-rule estimates (`make estimate EXP=cifar2`).

Measures, after a warm-up each: one training step at batch 128 per precision (fp32, tf32, bf16, bf16+compile);
an inference forward pass per image, in fp32 (sampling) and at each oracle setting (``measure.precision``,
``measure.compile``); a per-example training-loss gradient per (example, draw); a K-FAC fit (expand, reduce) per
(example, draw) and its eigendecomposition per fit; the rotation of a training gradient into the Kronecker
eigenbasis (``influence.query_bank: eigenbasis``); a TRAK projection per gradient at k = 32768 (batches of 32).
Prints them as JSON (the shape of `diffattr.cost.REFERENCE`).

    python bench/unit_costs.py [--preset ddpm_cifar] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
import warnings

import torch
from train_throughput import time_step  # same directory

from diffattr.curvature import FlatEps, Variant, build_operator, curvature_from_operator
from diffattr.diffusion import Schedule
from diffattr.diffusion.ddpm import eps_fn
from diffattr.gradients import training_gradients
from diffattr.models import build_unet, compile_unet, precision_context
from diffattr.scores.influence import KFACPreconditioner
from diffattr.scores.trak import make_projector, project


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeat: int = 1, warmup: bool = True) -> float:
    if warmup:
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="ddpm_cifar")
    ap.add_argument("--json", default=None, help="also write the result here (after every measurement)")
    ap.add_argument("--small", action="store_true", help="tiny sizes (a CPU check of the script itself)")
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    s = Schedule.linear()
    model = build_unet(args.preset).to(device).eval()
    c, size = model.config.in_channels, model.config.sample_size
    fwd_batch, grad_b, mc, n_fit, n_proj = (8, 2, 2, 4, 2) if args.small else (500, 4, 8, 32, 32)
    out: dict = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }

    def record(key: str, value) -> None:
        out[key] = value
        print(f"{key}: {value}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=2)

    record("train_batch", 8 if args.small else 128)
    record("train_step_s", {p: time_step(args.preset, out["train_batch"], p, device, 2 if args.small else 5)
                            for p in (["fp32", "tf32", "bf16", "bf16+compile"] if gpu else ["fp32"])})
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # the attribution rules' fp32

    x = torch.rand(fwd_batch, c, size, size, device=device) * 2 - 1
    t = torch.randint(1000, (fwd_batch,), device=device)
    eps = eps_fn(model)

    def forward():
        with torch.inference_mode():
            eps(x, t)

    record("forward_s_per_image", timed(forward, 3) / fwd_batch)
    # the oracles' forward at measure.precision / measure.compile (the warm-up call pays the compilation)
    at = {}
    for key in ["tf32", "bf16", "bf16+compile"] if gpu else ["bf16"]:
        precision, _, compiled = key.partition("+")
        net = eps_fn(compile_unet(model, bool(compiled)))
        autocast = precision_context(precision, device.type)

        def forward_at(net=net, autocast=autocast):
            with torch.inference_mode(), autocast:
                net(x, t).float()

        at[key] = timed(forward_at, 3) / fwd_batch
    record("forward_s_per_image_at", at)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # the attribution rules' fp32

    wrapper = FlatEps(model)
    imgs = torch.rand(max(grad_b, n_proj), c, size, size, device=device) * 2 - 1
    g_time = timed(lambda: training_gradients(wrapper, imgs[:grad_b], torch.arange(grad_b), s, mc, seed=0), 2)
    record("gradient_s_per_example_draw", g_time / (grad_b * mc))

    # K-FAC: the factor pass scales with examples x draws; the float64 eigendecomposition is a fixed cost per fit
    fit_imgs = torch.rand(n_fit, c, size, size, device=device) * 2 - 1
    curvatures = {}
    for approx in ("expand", "reduce"):
        v = Variant.from_name(f"kfac_mc_{approx}")
        build_operator(wrapper, fit_imgs[:2], s, v, 1, 2, 0, False, device, progress=False)[0].compute_kronecker_factors()
        sync()
        t0 = time.perf_counter()
        op, scale = build_operator(wrapper, fit_imgs, s, v, mc, min(n_fit, 16), 0, False, device, progress=False)
        op.compute_kronecker_factors()
        sync()
        record(f"kfac_fit_{approx}_s_per_example_draw", (time.perf_counter() - t0) / (n_fit * mc))
        t0 = time.perf_counter()
        curvatures[approx] = curvature_from_operator(op, wrapper, scale, v, {})
        sync()
        record(f"kfac_eig_{approx}_s", time.perf_counter() - t0)

    grads = training_gradients(wrapper, imgs[:n_proj], torch.arange(n_proj), s, 1, seed=0)
    rotate = KFACPreconditioner(curvatures["expand"], [1.0]).rotate  # the eigenbasis bank's per-variant rotation
    record("kfac_rotate_s_per_gradient", timed(lambda: rotate(grads), 1) / n_proj)
    k = 512 if args.small else 32768
    proj = make_projector(grads.shape[1], k, 0, device)
    record("projector", type(proj).__name__)
    record("projection_dim", k)
    # traker's BasicProjector regenerates its matrix blocks per call: the cost per gradient falls with the batch
    record("project_batch", n_proj)
    record("project_s_per_gradient", timed(lambda: project(proj, grads), 1, warmup=False) / n_proj)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
