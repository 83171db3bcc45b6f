"""Stages of ``rules/train.smk``: one model (the full one, a counterfactual or down-weighted run), the seeds of one
retraining subset, and the samples of the full model."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffattr.data import read_subsets, read_train
from diffattr.data.space import to_model_space, to_uint8
from diffattr.diffusion import Schedule, ddpm
from diffattr.io import atomic_path, read_h5, write_h5
from diffattr.models import build_unet, load_model, save_model
from diffattr.plots import save_image_grid
from diffattr.runtime import select_device
from diffattr.stages import Paths, model_dir
from diffattr.train import loop as training

log = logging.getLogger(__name__)


def train_model(
    input: Paths,
    output: Paths,
    *,
    model_id: str,
    checkpoint: str,
    model: Mapping[str, Any],
    train: Mapping[str, Any],
    diffusion: Mapping[str, Any],
    downweight_factor: float,
    device: str,
) -> None:
    """Train model ``model_id`` (``full``, ``downweight{m}_seed{k}``, ``cf{r}``) and save its EMA weights. A
    down-weighted model sees every image, those outside subset m with loss weight ``downweight_factor``
    (``ablations.downweight.factor``).

    Inputs: ``train`` (train.h5), ``subsets`` (subsets.h5), ``removals`` (counterfactual runs only).
    Outputs: ``config`` + ``weights`` (diffusers ``save_pretrained``), ``loss`` (loss.csv: step, loss, lr) and
    ``info`` (train_info.json: the arguments that made it). The checkpoint is deleted once the model is saved.
    """
    _train_models(input, [(model_id, output.config, output.weights, output.loss, output.info, checkpoint)],
                  model, train, diffusion, downweight_factor, device)


def train_subset(
    input: Paths,
    output: Paths,
    *,
    model_ids: Sequence[str],
    checkpoints: Sequence[str],
    model: Mapping[str, Any],
    train: Mapping[str, Any],
    diffusion: Mapping[str, Any],
    device: str,
) -> None:
    """Train the seeds of one subset, ``subset{m}_seed{k}`` for every k, one after the other in this process (one
    start-up and one read of the data for K models). Outputs as :func:`train_model`, each a list in seed order.

    The checkpoints are deleted only once every model of the job is saved: a job killed after its first models
    (whose outputs Snakemake then discards) redoes them from their final checkpoints, without training again.
    """
    jobs = list(zip(model_ids, output.config, output.weights, output.loss, output.info, checkpoints, strict=True))
    _train_models(input, jobs, model, train, diffusion, 1.0, device)


def _train_models(
    input: Paths, jobs: Sequence[tuple[str, str, str, str, str, str]], model_cfg: Mapping[str, Any],
    train_cfg: Mapping[str, Any], diffusion: Mapping[str, Any], downweight_factor: float, device: str,
) -> None:
    """Train and save models one after the other; ``jobs``: (model id, config, weights, loss, info, checkpoint)."""
    device = select_device(device)
    all_images = read_train(input.train)["images"]
    needs_subsets = any(job[0].startswith(("subset", "downweight")) for job in jobs)
    subsets = read_subsets(input.subsets) if needs_subsets else None
    for model_id, config_file, weights_file, loss_file, info_file, checkpoint in jobs:
        images = all_images
        spec = training.model_spec(model_id, train_cfg, None if subsets is None else subsets["seeds"])
        weights = None
        if spec.downweighted:
            weights = torch.where(torch.from_numpy(subsets["masks"][spec.subset]), 1.0, float(downweight_factor))
        elif spec.subset is not None:
            images = images[subsets["masks"][spec.subset]]
        if spec.removal is not None:
            removals = getattr(input, "removals", None)
            if removals is None:
                raise ValueError(f"model {model_id} needs the counterfactual removals file")
            images = images[read_h5(removals, expect={"masks": (None, images.shape[0])})["masks"][spec.removal]]
        n, c, h, w = images.shape
        log.info("training %s on %d images %s: seed %d, %d steps, device %s%s", model_id, n, (c, h, w), spec.seed,
                 spec.steps, device,
                 "" if weights is None else f", {int((weights < 1).sum())} down-weighted x{downweight_factor}")
        net = build_unet(model_cfg["preset"], in_channels=c, sample_size=h)
        net, history = training.train(net, to_model_space(images), Schedule.from_config(diffusion), train_cfg,
                                      spec.seed, spec.steps, checkpoint, device, weights=weights)
        out_dir = model_dir([config_file, weights_file, loss_file, info_file])
        out_dir.mkdir(parents=True, exist_ok=True)
        save_model(net, out_dir)
        with atomic_path(loss_file) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "loss", "lr"])
            writer.writerows(history)
        info = {
            **asdict(spec),
            "n_train": n,
            "loss_weight_factor": None if weights is None else float(downweight_factor),
            "preset": model_cfg["preset"],
            "train": dict(train_cfg),
            "diffusion": dict(diffusion),
            "final_loss_mean_last_10pct": float(np.mean([r[1] for r in history[-max(1, len(history) // 10):]])),
        }
        with atomic_path(info_file) as tmp:
            tmp.write_text(json.dumps(info, indent=2))
        log.info("saved %s (final loss %.4f)", out_dir, info["final_loss_mean_last_10pct"])
    for job in jobs:
        Path(job[-1]).unlink(missing_ok=True)


def sample_images(
    input: Paths, output: Paths, *, sample: Mapping[str, Any], diffusion: Mapping[str, Any], device: str
) -> None:
    """``samples.h5`` and its PNG grid: ``sample.n_samples`` ancestral samples of the full model.

    Datasets: ``samples`` float32 ``[S, C, H, W]`` (model space, [-1, 1] up to sampling noise), ``images`` uint8
    ``[S, C, H, W]``, ``x_T`` float32 ``[S, C, H, W]`` and, if ``sample.store_trajectories``, ``trajectories``
    float32 ``[S, T + 1, C, H, W]`` (index 0 = x_T, index T = the sample).
    """
    device = select_device(device)
    source = model_dir(input.model)
    net = load_model(source, device)
    schedule = Schedule.from_config(diffusion)
    c, size = net.config.in_channels, net.config.sample_size
    gen = torch.Generator().manual_seed(sample["seed"])
    xs, x_ts, trajs = [], [], []
    for start in range(0, sample["n_samples"], sample["batch_size"]):
        b = min(sample["batch_size"], sample["n_samples"] - start)
        x0, x_T, traj = ddpm.sample(ddpm.eps_fn(net), schedule, (b, c, size, size), gen, device,
                                    sample["store_trajectories"], clip_x0=sample["clip_x0"])
        xs.append(x0.cpu())
        x_ts.append(x_T)
        if traj is not None:
            trajs.append(traj)
        log.info("sampled %d/%d", start + b, sample["n_samples"])
    samples = torch.cat(xs).numpy().astype(np.float32)
    data = {"samples": samples, "images": to_uint8(samples), "x_T": torch.cat(x_ts).numpy().astype(np.float32)}
    if trajs:
        data["trajectories"] = torch.cat(trajs).numpy().astype(np.float32)
    write_h5(output.samples, data, config={"sample": dict(sample), "diffusion": dict(diffusion)},
             attrs={"model_dir": str(source), "num_timesteps": schedule.num_timesteps})
    save_image_grid(data["images"], output.grid)

