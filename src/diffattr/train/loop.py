"""Training loop.

Recipe (paper appendix G; all values from the ``train`` config section): AdamW, gradient clipping, EMA with
warm-up (diffusers ``EMAModel``: decay min(d, (1+n)/(10+n))), cosine LR schedule with linear warm-up, uniform
random batches (with replacement), optional random horizontal flips, precision fp32 / tf32 / bf16 (autocast),
and optionally the forward and backward passes compiled with ``torch.compile`` (``train.compile``, with CUDA
graphs for ``reduce-overhead``; the optimiser, EMA and checkpoints act on the uncompiled module, whose parameters
the compiled one shares). The EMA weights are the model used downstream.

Resuming: every ``checkpoint_every`` steps the full state (model, EMA, optimiser, LR schedule, all RNG states,
step, loss history) is written atomically. A rerun with the same inputs continues from the last checkpoint and,
on CPU, ends with exactly the weights of an uninterrupted run. "The same inputs" is checked with a fingerprint of
everything that shapes the run (:func:`run_fingerprint`): a checkpoint made for other images, another model,
schedule or ``train`` section is discarded with a log line. Checkpoints hold tensors and plain values only and are
read with ``torch.load(weights_only=True)``, so a checkpoint file never runs code; one that cannot be read that
way (corrupt, truncated, or carrying pickled objects) is moved aside with a warning and training starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from diffattr.diffusion import Schedule, ddpm_loss
from diffattr.diffusion.ddpm import eps_fn
from diffattr.io import atomic_path
from diffattr.models import compile_unet, precision_context

log = logging.getLogger(__name__)

MODEL_ID = re.compile(
    r"^(full|subset(?P<subset>\d+)_seed(?P<seed>\d+)|downweight(?P<down>\d+)_seed(?P<dseed>\d+)|cf(?P<cf>\d+))$")


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class ModelSpec:
    """What one model is trained on: a random ``subset``, a counterfactual ``removal`` row, or (both None) all data;
    ``downweighted``: all data, with the examples outside subset ``subset`` down-weighted in the loss."""

    model_id: str
    subset: int | None
    seed_index: int | None
    seed: int
    steps: int
    removal: int | None = None
    downweighted: bool = False


def model_spec(model_id: str, train_cfg: Mapping[str, Any], seeds: np.ndarray | None) -> ModelSpec:
    """Resolve a model id to its data, training seed and steps.

    ``full``: all data, ``train.seed``, ``train.steps``. ``subset{m}_seed{k}``: subset m with its k-th seed,
    ``train.subset_steps``. ``downweight{m}_seed{k}``: all data with the examples outside subset m down-weighted
    (paper Figs. 13/14), subset m's k-th seed, ``train.steps``. ``cf{r}``: the full model's recipe and seed without
    removal set r (counterfactual).

    Args:
        model_id: The id.
        train_cfg: The ``train`` config section.
        seeds: ``[M, K]`` training seeds from ``subsets.h5`` (needed for subset and down-weighted models).
    """
    match = MODEL_ID.match(model_id)
    if not match:
        raise ValueError(f"invalid model id {model_id!r}: expected 'full', 'subset<m>_seed<k>', "
                         "'downweight<m>_seed<k>' or 'cf<r>'")
    if model_id == "full":
        return ModelSpec(model_id, None, None, int(train_cfg["seed"]), int(train_cfg["steps"]))
    if match["cf"] is not None:
        return ModelSpec(model_id, None, None, int(train_cfg["seed"]), int(train_cfg["steps"]), int(match["cf"]))
    down = match["down"] is not None
    m, k = (int(match["down"]), int(match["dseed"])) if down else (int(match["subset"]), int(match["seed"]))
    if seeds is None or m >= seeds.shape[0] or k >= seeds.shape[1]:
        shape = None if seeds is None else seeds.shape
        raise ValueError(f"model id {model_id!r} is outside the subsets file (seeds shape {shape})")
    steps = int(train_cfg["steps"] if down else train_cfg["subset_steps"])
    return ModelSpec(model_id, m, k, int(seeds[m, k]), steps, downweighted=down)


def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "data": gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Any], gen: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["data"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# torch's fused AdamW: one kernel for every parameter's update instead of a Python loop over ~100 tensors (the
# default on a CPU); 9 % of a quickstart training step on this 2-core machine (53.1 vs 58.3 ms). Part of the run
# fingerprint, since its updates differ from the loop's in the last bits.
OPTIMIZER = "AdamW(fused)"

SETTLE_EVERY = 50  # steps between reads of the training loss on a GPU (see train)


def _async_device(device: torch.device) -> bool:
    """Whether ``device`` runs its kernels asynchronously to the host (every one but the CPU)."""
    return device.type != "cpu"


def _adamw(model: torch.nn.Module, cfg: Mapping[str, Any]) -> torch.optim.AdamW:
    # torch has the fused kernel on every device it trains on (CPU, CUDA, MPS, XPU, ...), so the tag always holds
    return torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"], fused=True)


def run_fingerprint(
    model: torch.nn.Module, data: torch.Tensor, schedule: Schedule, train_cfg: Mapping[str, Any], seed: int, steps: int,
    weights: torch.Tensor | None = None,
) -> str:
    """SHA-256 of everything that shapes a training run: the exact training tensor, the model's configuration and
    parameter shapes, the noise schedule, the ``train`` section, the optimizer implementation, the seed, the step
    count and the per-example loss weights."""
    h = hashlib.sha256()
    config = dict(getattr(model, "config", {}) or {})
    h.update(json.dumps({"train": dict(train_cfg), "seed": seed, "steps": steps, "model": config,
                         "optimizer": OPTIMIZER,
                         "params": [(n, list(p.shape)) for n, p in model.named_parameters()],
                         "data_shape": list(data.shape)}, sort_keys=True, default=str).encode())
    h.update(data.detach().cpu().float().contiguous().numpy().tobytes())
    h.update(schedule.betas.detach().cpu().double().numpy().tobytes())
    if weights is not None:
        h.update(b"weights" + weights.detach().cpu().double().contiguous().numpy().tobytes())
    return h.hexdigest()


def _load_checkpoint(ckpt: Path, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint's state, or None (after moving the file aside) if it cannot be read as plain tensors."""
    try:
        return torch.load(ckpt, map_location=device, weights_only=True)
    except Exception as exc:  # corrupt zip, truncated file, or pickled objects that weights_only refuses
        aside = ckpt.with_name(ckpt.name + ".unreadable")
        ckpt.replace(aside)
        log.warning("checkpoint %s is unreadable (%s: %s); moved it to %s and starting from step 0",
                    ckpt, type(exc).__name__, str(exc).splitlines()[0][:200], aside)
        return None


def train(
    model: torch.nn.Module,
    data: torch.Tensor,
    schedule: Schedule,
    train_cfg: Mapping[str, Any],
    seed: int,
    steps: int,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = True,
    weights: torch.Tensor | None = None,
) -> tuple[torch.nn.Module, list[tuple[int, float, float]]]:
    """Train ``model`` on ``data`` and return the EMA model and the loss history.

    Args:
        model: Freshly built U-Net (its initialisation is redone from ``seed``).
        data: Training images ``[N, C, H, W]`` in [-1, 1].
        schedule: Noise schedule.
        train_cfg: The ``train`` config section.
        seed: Seed of all randomness (initialisation, batches, t, ε, flips, dropout).
        steps: Number of optimiser steps.
        checkpoint: Checkpoint file; resumed from when it exists and matches these arguments.
        device: Torch device.
        on_step: Called as ``on_step(step, loss)`` after each step (step counts from 1).
        progress: Show a progress bar.
        weights: Per-example loss weights ``[N]`` (None: all 1): the loss is the mean over the batch of
            w_n · ℓ(x_n), i.e. the data-set loss (1/N) Σ_n w_n ℓ(x_n) on uniform batches (paper Figs. 13/14).

    Returns:
        The model holding the EMA weights (eval mode), and ``[(step, loss, lr), ...]``.

    Raises:
        TrainingDiverged: At the first step with a non-finite loss (on a GPU, within ``SETTLE_EVERY`` steps of
            it, naming that step).
    """
    device = torch.device(device)
    cfg = dict(train_cfg)
    autocast = precision_context(cfg["precision"], device.type)
    fingerprint = run_fingerprint(model, data, schedule, cfg, seed, steps, weights)
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):  # dropout uses the global RNG: keep it local to this run
        torch.manual_seed(seed)
        for module in model.modules():  # re-initialise from the seed so the run depends on nothing else
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        model.to(device).train()
        data = data.to(device)
        gen = torch.Generator().manual_seed(seed)
        opt = _adamw(model, cfg)
        sched = get_cosine_schedule_with_warmup(opt, int(round(cfg["warmup_fraction"] * steps)), steps)
        ema = EMAModel(model.parameters(), decay=cfg["ema_decay"], foreach=True)
        history: list[tuple[int, float, float]] = []
        start = 0
        ckpt = Path(checkpoint) if checkpoint else None
        state = _load_checkpoint(ckpt, device) if ckpt is not None and ckpt.is_file() else None
        if state is not None:
            if state.get("fingerprint") == fingerprint:
                model.load_state_dict(state["model"])
                ema.load_state_dict(state["ema"])
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["lr_schedule"])
                _set_rng_state(state["rng"], gen, device)
                history, start = list(state["history"]), int(state["step"])
                log.info("resumed from %s at step %d/%d", ckpt, start, steps)
            else:
                ckpt.unlink()
                log.warning("discarded checkpoint %s: it was made for other inputs (training images, model, noise "
                            "schedule, train settings, seed or steps differ); starting from step 0", ckpt)
        ema.to(device)
        # torch.compile wraps the module without copying it: the state dicts stay those of ``model``
        eps_model = eps_fn(compile_unet(model, cfg.get("compile", False)))
        # CUDA graphs (train.compile: reduce-overhead) reuse their output buffers from one replay to the next: say
        # where a step begins, so that a replay never overwrites tensors the previous step still holds
        graphs = cfg.get("compile") == "reduce-overhead"
        n, bs = data.shape[0], cfg["batch_size"]
        bar = tqdm(total=steps, initial=start, desc="train", disable=not progress, mininterval=2)
        # The losses of recent steps stay on the device until a checkpoint, the end, every SETTLE_EVERY steps or (on
        # a CPU, or for an on_step callback) every step: reading one waits for the device, which would otherwise
        # stop a GPU's queue from running ahead of the Python loop every step. The host-to-device copies of the
        # step's draws are non-blocking for the same reason (from pageable memory, the copy is staged at once).
        pending: list[tuple[int, torch.Tensor, float]] = []

        def settle() -> None:
            values = torch.stack([loss for _, loss, _ in pending]).tolist() if pending else []
            for (done, _, lr), value in zip(pending, values, strict=True):
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        f"non-finite training loss {value} at step {done}/{steps} (seed {seed}); suspects: "
                        f"train.lr={cfg['lr']:g} (lower it) and train.precision={cfg['precision']} (fp32 is the "
                        "safest), or non-finite training images")
                history.append((done, value, lr))
                if on_step is not None:
                    on_step(done, value)
            pending.clear()

        every_step = on_step is not None or not _async_device(device)
        for step in range(start + 1, steps + 1):
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            idx = torch.randint(n, (bs,), generator=gen)
            t = torch.randint(schedule.num_timesteps, (bs,), generator=gen).to(device, non_blocking=True)
            eps = torch.randn((bs, *data.shape[1:]), generator=gen).to(device, non_blocking=True)
            flip = torch.rand(bs, generator=gen) < 0.5
            x0 = data[idx.to(device, non_blocking=True)]
            if cfg["hflip"]:
                x0 = torch.where(flip.to(device, non_blocking=True)[:, None, None, None], x0.flip(-1), x0)
            with autocast:
                if weights is None:
                    loss = ddpm_loss(eps_model, schedule, x0, t, eps) / x0[0].numel()
                else:
                    per_example = ddpm_loss(eps_model, schedule, x0, t, eps, reduce=False)
                    loss = (weights[idx].to(device, non_blocking=True) * per_example).mean() / x0[0].numel()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            opt.step()
            sched.step()
            ema.step(model.parameters())
            pending.append((step, loss.detach(), sched.get_last_lr()[0]))
            bar.update()
            save = ckpt is not None and (step % cfg["checkpoint_every"] == 0 or step == steps)
            if every_step or save or step == steps or step % SETTLE_EVERY == 0:
                settle()
            if save:
                state = {
                    "fingerprint": fingerprint,
                    "model": model.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": opt.state_dict(),
                    "lr_schedule": sched.state_dict(),
                    "rng": _rng_state(gen, device),
                    "step": step,
                    "history": history,
                }
                with atomic_path(ckpt) as tmp:
                    torch.save(state, tmp)
        bar.close()
    ema.copy_to(model.parameters())
    return model.eval(), history
