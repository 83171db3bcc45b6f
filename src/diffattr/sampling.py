"""Stage ``sample_images``: S samples from the full model, with their sampling trajectories."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffattr.diffusion import Schedule, sample
from diffattr.diffusion.ddpm import eps_fn
from diffattr.io import Artefact, read_h5, write_h5
from diffattr.models import load_model
from diffattr.plots import save_image_grid

log = logging.getLogger(__name__)


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Model-space images in [-1, 1] -> uint8 (clipped)."""
    x = np.asarray(x, dtype=np.float32)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def sample_images(
    config: Mapping[str, Any], model_dir: str | Path, out_h5: str | Path, out_png: str | Path, device: str = "cpu"
) -> Path:
    """Generate ``sample.n_samples`` samples and write ``samples.h5`` and a PNG grid.

    Datasets: ``samples`` float32 ``[S, C, H, W]`` (model space, [-1, 1] up to sampling noise), ``images`` uint8
    ``[S, C, H, W]``, ``x_T`` float32 ``[S, C, H, W]`` and, if ``sample.store_trajectories``, ``trajectories``
    float32 ``[S, T + 1, C, H, W]`` (index 0 = x_T, index T = the sample).
    """
    cfg = config["sample"]
    model = load_model(model_dir, device)
    schedule = Schedule.from_config(config["diffusion"])
    c, size = model.config.in_channels, model.config.sample_size
    gen = torch.Generator().manual_seed(cfg["seed"])
    xs, x_ts, trajs = [], [], []
    for start in range(0, cfg["n_samples"], cfg["batch_size"]):
        b = min(cfg["batch_size"], cfg["n_samples"] - start)
        x0, x_T, traj = sample(eps_fn(model), schedule, (b, c, size, size), gen, device, cfg["store_trajectories"])
        xs.append(x0.cpu())
        x_ts.append(x_T)
        if traj is not None:
            trajs.append(traj)
        log.info("sampled %d/%d", start + b, cfg["n_samples"])
    samples = torch.cat(xs).numpy().astype(np.float32)
    data = {"samples": samples, "images": to_uint8(samples), "x_T": torch.cat(x_ts).numpy().astype(np.float32)}
    if trajs:
        data["trajectories"] = torch.cat(trajs).numpy().astype(np.float32)
    write_h5(out_h5, data, config={"sample": dict(cfg), "diffusion": dict(config["diffusion"])},
             attrs={"model_dir": str(model_dir), "num_timesteps": schedule.num_timesteps})
    save_image_grid(data["images"], out_png)
    return Path(out_h5)


def read_samples(path: str | Path) -> Artefact:
    """Read ``samples.h5`` with shape checks."""
    return read_h5(path, expect={"samples": (None, None, None, None), "images": (None, None, None, None)})
