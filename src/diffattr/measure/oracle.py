"""Measurement oracles: every measurement of every generated sample under one model (stage ``measure_model``),
and all models gathered into one file (stage ``gather_measurements``).

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

import json
import logging
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from diffattr.diffusion import Schedule
from diffattr.diffusion.ddpm import eps_fn
from diffattr.io import Artefact, read_h5, write_h5
from diffattr.measure import functions as F
from diffattr.models import load_model
from diffattr.sampling import read_samples

log = logging.getLogger(__name__)


#: Independent streams of draws for one (seed, index): the (t, ε) draws of losses, ELBOs and gradients, and the
#: ε draws of the fixed-timestep losses.
MAIN_STREAM, TIMESTEP_STREAM = 0, 1


def crn_generator(seed: int, index: int, stream: int = MAIN_STREAM, model_key: int | None = None) -> torch.Generator:
    """CPU generator for draw set ``index`` (a sample, or a training example) under base ``seed``.

    Args:
        seed: Base seed (a config value).
        index: Sample or training-example index.
        stream: Which independent stream (:data:`MAIN_STREAM`, :data:`TIMESTEP_STREAM`).
        model_key: None for common random numbers across models; a model's key (:func:`model_key`) for draws of
            its own.
    """
    entropy = [seed, index] if model_key is None else [seed, index, model_key]
    state = np.random.SeedSequence(entropy, spawn_key=(stream,) if stream else ()).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def model_key(model_id: str) -> int:
    """A stable integer per model id (seeds its own draws when common random numbers are off)."""
    return zlib.crc32(model_id.encode())


def crn_draws(
    seed: int, index: int, n: int, shape: Sequence[int], num_timesteps: int, model: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (t, ε) draws of one sample: ``t`` ``[n]`` uniform on 0..T-1 and ``eps`` ``[n, *shape]``."""
    g = crn_generator(seed, index, MAIN_STREAM, model)
    t = torch.randint(num_timesteps, (n,), generator=g)
    eps = torch.randn((n, *shape), generator=g)
    return t, eps


def timestep_draws(seed: int, index: int, n: int, shape: Sequence[int], model: int | None = None) -> torch.Tensor:
    """The ε draws ``[n, *shape]`` of one sample's fixed-timestep losses (shared by all its timesteps)."""
    return torch.randn((n, *shape), generator=crn_generator(seed, index, TIMESTEP_STREAM, model))


def _mean_se(terms: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over the last dim."""
    n = terms.shape[-1]
    mean = terms.mean(-1)
    se = terms.std(-1, correction=1) / np.sqrt(n) if n > 1 else torch.full_like(mean, float("nan"))
    return mean.double().cpu().numpy(), se.double().cpu().numpy()


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
                    x_t = F._noisy(schedule, x0, t, eps)
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


def measure_model(
    config: Mapping[str, Any],
    model_dir: str | Path,
    samples_path: str | Path,
    out: str | Path,
    device: str = "cpu",
) -> Path:
    """Measure every generated sample under one trained model and write a small HDF5.

    Datasets: ``loss``, ``elbo``, ``trajectory`` ``[S]``, ``timestep_loss`` ``[S, n_steps]`` (those configured),
    each with ``{name}_se`` (Monte-Carlo standard error; 0 for the exact trajectory log-probability).
    Attributes: ``model_id``, ``subset`` (-1 for the full model), ``seed_index``, ``seed``, ``timesteps``.
    """
    model_dir = Path(model_dir)
    art = read_samples(samples_path)
    samples = torch.from_numpy(art["samples"])
    traj = torch.from_numpy(art["trajectories"]) if "trajectories" in art.data else None
    model = load_model(model_dir, device)
    schedule = Schedule.from_config(config["diffusion"])
    values = measure_samples(model, schedule, samples, config["measure"], traj, device, model_id=model_dir.name)
    info = json.loads((model_dir / "train_info.json").read_text())
    subset = -1 if info["subset"] is None else int(info["subset"])  # -1: full data or a counterfactual run
    seed_index = -1 if info["seed_index"] is None else int(info["seed_index"])
    for name in config["measure"]["measurements"]:
        rel = np.abs(values[f"{name}_se"] / values[name])
        log.info("%s: mean %.5g, median relative s.e. %.3g", name, float(np.mean(values[name])), float(np.median(rel)))
    return write_h5(
        out,
        values,
        config={"measure": dict(config["measure"]), "diffusion": dict(config["diffusion"])},
        attrs={"model_id": model_dir.name, "subset": subset, "seed_index": seed_index, "seed": int(info["seed"]),
               "timesteps": list(config["measure"]["timesteps"]),
               "common_random_numbers": bool(config["measure"]["common_random_numbers"])},
    )


def gather_measurements(config: Mapping[str, Any], paths: Sequence[str | Path], out: str | Path) -> Path:
    """Stack per-model measurement files into ``measurements.h5``.

    Datasets: each measurement ``[n_models, n_samples]`` (``timestep_loss``: ``[n_models, n_samples, n_steps]``)
    and its ``_se``; ``model_id`` str ``[n_models]``, ``subset`` int ``[n_models]`` (-1 = full model),
    ``seed_index`` and ``seed`` int ``[n_models]``; ``timesteps`` ``[n_steps]`` (paper steps).
    """
    arts = [read_h5(p) for p in paths]
    names = sorted(arts[0].data)
    for a in arts[1:]:
        if sorted(a.data) != names:
            raise ValueError(f"{a.path} holds {sorted(a.data)}, {arts[0].path} holds {names}")
    data: dict[str, Any] = {name: np.stack([a[name] for a in arts]) for name in names}
    data["model_id"] = np.asarray([a.attrs["model_id"] for a in arts])
    for key in ("subset", "seed_index", "seed"):
        data[key] = np.asarray([a.attrs[key] for a in arts], dtype=np.int64)
    data["timesteps"] = np.asarray(config["measure"]["timesteps"], dtype=np.int64)
    return write_h5(out, data, config={"measure": dict(config["measure"])}, attrs={"n_models": len(arts)})


def read_measurements(path: str | Path) -> Artefact:
    """Read ``measurements.h5`` with shape checks."""
    return read_h5(path, expect={"model_id": (None,), "subset": (None,), "seed": (None,)})
