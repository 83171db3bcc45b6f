"""Measurement oracles: every measurement of every generated sample under one model (used by the stages
``measure_model`` and ``gather_measurements``), and the reader of the gathered ``measurements.h5``.

Common random numbers (``measure.common_random_numbers``, on by default): the Monte-Carlo draws (t, ε) of sample
``i`` come from a generator seeded with ``(measure.seed, i)`` only, so every model is evaluated on identical draws
and differences between retrained models are not drowned in estimator noise. Off, the seed also takes the model
id, so each model gets independent draws (each oracle is then an unbiased estimate on its own, and the LDS of
every method, the exact-retraining oracle included, falls as the estimator noise enters the actual changes).

Draw counts: ``measure.mc_samples`` (t, ε) draws for the loss and the ELBO (one forward pass serves both), and
``measure.timestep_mc_samples`` ε draws for *each* timestep loss (5000 of each in the paper, appendix G.5), from
their own stream and shared across the timesteps.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import sem
from tqdm.auto import tqdm

from diffattr.diffusion import Schedule
from diffattr.diffusion.ddpm import eps_fn
from diffattr.diffusion.draws import crn_draws, model_key, noisy, timestep_draws
from diffattr.io import Artefact, read_h5
from diffattr.measure import functions as F

log = logging.getLogger(__name__)


def _mean_se(terms: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error (``scipy.stats.sem``) over the last dim."""
    mean = terms.mean(-1).double().cpu().numpy()
    if terms.shape[-1] < 2:
        return mean, np.full_like(mean, np.nan)
    return mean, sem(terms.double().cpu().numpy(), axis=-1)


def measure_samples(
    model: torch.nn.Module,
    schedule: Schedule,
    samples: torch.Tensor,
    measure_cfg: Mapping[str, Any],
    trajectories: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    model_id: str | None = None,
) -> dict[str, np.ndarray]:
    """Compute the configured measurements for samples ``[S, C, H, W]`` under one model (inference mode).

    ``model_id`` seeds the model's own draws when ``measure.common_random_numbers`` is off (required then).

    Returns:
        ``{name: [S]}`` (``timestep_loss``: ``[S, n_steps]``) and ``{name}_se`` Monte-Carlo standard errors.
    """
    names = measure_cfg["measurements"]
    n, bs, seed = measure_cfg["mc_samples"], measure_cfg["batch_size"], measure_cfg["seed"]
    n_step_draws = measure_cfg.get("timestep_mc_samples") or n
    if measure_cfg.get("common_random_numbers", True):
        key = None
    elif model_id is None:
        raise ValueError("measure.common_random_numbers: false needs the model id to seed each model's own draws")
    else:
        key = model_key(model_id)
    steps = list(measure_cfg["timesteps"])
    T = schedule.num_timesteps
    if any(not 1 <= s <= T for s in steps):
        raise ValueError(f"measure.timesteps must lie in 1..{T} (paper steps), got {steps}")
    if "trajectory" in names and trajectories is None:
        raise ValueError("the trajectory measurement needs stored trajectories (sample.store_trajectories: true)")
    model = model.to(device).eval()
    eps_model = eps_fn(model)
    S, shape = samples.shape[0], tuple(samples.shape[1:])
    out: dict[str, list] = {}
    with torch.inference_mode():
        for i in tqdm(range(S), desc="measure", disable=not progress, mininterval=2):
            x0 = samples[i : i + 1].to(device)
            t_all, eps_all = crn_draws(seed, i, n, shape, T, key)
            if "loss" in names or "elbo" in names:
                lt, et = [], []
                for c in range(0, n, bs):
                    t = t_all[c : c + bs].unsqueeze(0).to(device)
                    eps = eps_all[c : c + bs].unsqueeze(0).to(device)
                    x_t = noisy(schedule, x0, t, eps)
                    pred = F._flat_eps(eps_model, x_t, t)  # one forward pass serves loss and ELBO
                    lt.append(F.loss_from_pred(eps, pred))
                    et.append(F.elbo_from_pred(schedule, x0, t, x_t, pred))
                for name, terms in (("loss", lt), ("elbo", et)):
                    if name in names:
                        out.setdefault(name, []).append(_mean_se(torch.cat(terms, 1)[0]))
            if "timestep_loss" in names:
                eps = timestep_draws(seed, i, n_step_draws, shape, key)
                per_step = []
                for s in steps:
                    terms = [
                        F.timestep_loss(eps_model, schedule, x0, [s], eps[c : c + bs].unsqueeze(0).to(device))[0, 0]
                        for c in range(0, n_step_draws, bs)
                    ]
                    per_step.append(_mean_se(torch.cat(terms)))
                out.setdefault("timestep_loss", []).append(tuple(np.stack(v) for v in zip(*per_step, strict=True)))
            if "trajectory" in names:
                traj = trajectories[i : i + 1].to(device)
                total = F.trajectory(eps_model, schedule, traj, chunk=bs)
                out.setdefault("trajectory", []).append((total[0].double().cpu().numpy(), np.float64(0.0)))
    result: dict[str, np.ndarray] = {}
    for name, vals in out.items():
        result[name] = np.stack([v[0] for v in vals])
        result[f"{name}_se"] = np.stack([v[1] for v in vals])
    return result


def read_measurements(path: str | Path) -> Artefact:
    """Read ``measurements.h5`` with shape checks."""
    return read_h5(path, expect={"model_id": (None,), "subset": (None,), "seed": (None,)})
