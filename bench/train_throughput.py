"""Training throughput of each U-Net preset on the device found here, per precision option.

Prints steps/s and images/s of one full training step (forward, backward, clipping, AdamW, EMA) as a table.
On a GPU it also prints the ratio to the reference for the paper preset (one H200, batch 128:
0.062 s/step TF32, 0.168 s strict fp32, 0.046 s bf16 + torch.compile).

    python bench/train_throughput.py [--steps 5] [--cifar-batch 128]
    python bench/train_throughput.py --presets unet_tiny --batch 64 --precisions fp32 bf16 fp32+compile --threads 1
                                     (the quickstart's training step, as one of its jobs runs it)
    python bench/train_throughput.py --presets unet_cifar_small --batch 128 --precisions tf32 tf32+compile tf32+cudagraphs
                                     (on a GPU: what CUDA graphs buy cifar2-mini's launch-bound U-Net)
    python bench/train_throughput.py --ops --presets unet_tiny unet_small unet_cifar_small ddpm_cifar
                                     (aten operations per step: what sets the step time where launches dominate)
    python bench/train_throughput.py --flops --presets unet_cifar_small ddpm_cifar
                                     (FLOPs per image per step: what sets it where the arithmetic does)
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers.training_utils import EMAModel

from diffattr.diffusion import Schedule, ddpm_loss
from diffattr.diffusion.ddpm import eps_fn
from diffattr.models import build_unet, compile_unet, count_parameters, precision_context

H200_REFERENCE = {"fp32": 0.168, "tf32": 0.062, "bf16+compile": 0.046}
COMPILE_OPTIONS = {"": False, "compile": True, "cudagraphs": "reduce-overhead"}  # suffix -> train.compile


def time_step(preset: str, batch: int, precision: str, device: torch.device, steps: int) -> tuple[float, float]:
    """Seconds per training step, and of the two warm-up steps before them (the compilation, and the CUDA graphs'
    recording in the second step, that a job pays once). ``precision`` is fp32, tf32 or bf16, with ``+compile``
    for torch.compile (as ``train.compile: true``: the forward and backward of the U-Net compiled) or
    ``+cudagraphs`` (``train.compile: reduce-overhead``: inductor replaying CUDA graphs)."""
    precision, _, compiled = precision.partition("+")
    model = build_unet(preset).to(device).train()
    net = compile_unet(model, COMPILE_OPTIONS[compiled])
    size, c = model.config.sample_size, model.config.in_channels
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as diffattr.train.loop
    ema = EMAModel(model.parameters(), decay=0.999, foreach=True)
    ema.to(device)
    schedule = Schedule.linear()
    autocast = precision_context(precision, device.type)
    x = torch.rand(batch, c, size, size, device=device) * 2 - 1
    t = torch.randint(1000, (batch,), device=device)
    eps = torch.randn_like(x)

    def step() -> None:
        if compiled == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()  # as diffattr.train.loop
        with autocast:
            loss = ddpm_loss(eps_fn(net), schedule, x, t, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.step(model.parameters())

    t0 = time.perf_counter()
    step()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps, first


def count_flops(preset: str, batch: int = 2) -> float:
    """Floating-point operations of one training step's forward and backward passes per image of ``preset``
    (torch.utils.flop_counter: matrix products and convolutions, each multiply-add counted as 2): the arithmetic a
    device must do whatever its launch overheads, so a study's training FLOPs over a device's achieved FLOP/s bound
    its training time from below."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_unet(preset).train()
    size, c = model.config.sample_size, model.config.in_channels
    x, t = torch.rand(batch, c, size, size) * 2 - 1, torch.randint(1000, (batch,))
    with FlopCounterMode(display=False) as counter:
        ddpm_loss(eps_fn(model), Schedule.linear(), x, t, torch.randn_like(x)).backward()
    return counter.get_total_flops() / batch


def count_ops(preset: str) -> int:
    """aten operations in one training step of ``preset`` (forward, backward, clipping, AdamW) on the CPU, batch 2:
    about the kernels a GPU launches per step, which set the step time of a launch-bound model."""
    from torch.profiler import profile

    model = build_unet(preset).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    size, c = model.config.sample_size, model.config.in_channels
    x, t = torch.rand(2, c, size, size) * 2 - 1, torch.randint(1000, (2,))

    def step() -> None:
        loss = ddpm_loss(eps_fn(model), Schedule.linear(), x, t, torch.randn_like(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()
    with profile() as prof:
        step()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on GPU, 5 on CPU)")
    ap.add_argument("--cifar-batch", type=int, default=None, help="batch for ddpm_cifar (default 128 GPU, 8 CPU)")
    ap.add_argument("--batch", type=int, default=32, help="batch for the small presets")
    ap.add_argument("--presets", nargs="+", default=["unet_tiny", "unet_small", "ddpm_cifar"])
    ap.add_argument("--precisions", nargs="+", default=None,
                    help="fp32, tf32, bf16, each with +compile or +cudagraphs (default: fp32, tf32, bf16 and "
                         "bf16+compile on a GPU, fp32 and bf16 on a CPU)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--ops", action="store_true", help="count the aten operations of a step of each preset instead")
    ap.add_argument("--flops", action="store_true",
                    help="count the FLOPs per image of a step's forward and backward passes of each preset instead")
    args = ap.parse_args()
    if args.ops:
        for preset in args.presets:
            print(f"{preset:<17} {count_ops(preset):>6} aten operations per training step")
        return
    if args.flops:
        for preset in args.presets:
            print(f"{preset:<17} {count_flops(preset) / 1e9:>9.3f} GFLOP per image per training step")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    steps = args.steps or (20 if gpu else 5)
    precisions = args.precisions or (["fp32", "tf32", "bf16", "bf16+compile"] if gpu else ["fp32", "bf16"])
    for precision in precisions:
        base, _, compiled = precision.partition("+")
        if base not in ("fp32", "tf32", "bf16") or compiled not in COMPILE_OPTIONS:
            ap.error(f"--precisions: {precision!r} is not fp32, tf32 or bf16 with an optional +compile or +cudagraphs")
    name = torch.cuda.get_device_name() if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; {steps} timed steps after 2 warm-up steps")
    print(f"{'preset':<16} {'params':>10} {'batch':>5} {'precision':<16} {'s/step':>8} {'steps/s':>8} {'images/s':>9} {'warm-up s':>9} {'vs H200 ref':>11}")
    for preset in args.presets:
        batch = (args.cifar_batch or (128 if gpu else 8)) if preset == "ddpm_cifar" else args.batch
        for precision in precisions:
            s, first = time_step(preset, batch, precision, device, steps)
            ref = ""
            if gpu and preset == "ddpm_cifar" and batch == 128 and precision in H200_REFERENCE:
                ref = f"{s / H200_REFERENCE[precision]:.2f}x"
            n = count_parameters(build_unet(preset))
            print(f"{preset:<16} {n:>10,} {batch:>5} {precision:<16} {s:>8.4f} {1 / s:>8.2f} {batch / s:>9.1f} {first:>9.1f} {ref:>11}")


if __name__ == "__main__":
    main()
