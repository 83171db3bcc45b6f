"""Stages of ``rules/measure.smk``: every generated sample measured under one model (or the seeds of one retraining
subset), then all models gathered."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffattr.diffusion import Schedule
from diffattr.io import read_h5, read_json, write_h5
from diffattr.measure import measure_samples
from diffattr.models import load_model
from diffattr.runtime import select_device
from diffattr.sampling import read_samples
from diffattr.stages import Paths, model_dir

log = logging.getLogger(__name__)


def measure_model(
    input: Paths, output: Paths, *, model_id: str, measure: Mapping[str, Any], diffusion: Mapping[str, Any],
    device: str,
) -> None:
    """``measurements/models/{model_id}.h5``: every configured measurement of every sample under one model.

    Datasets: ``loss``, ``elbo``, ``trajectory`` ``[S]``, ``timestep_loss`` ``[S, n_steps]`` (those configured),
    each with ``{name}_se`` (Monte-Carlo standard error; 0 for the exact trajectory log-probability).
    Attributes: ``model_id``, ``subset`` (-1 for the full model), ``seed_index``, ``seed``, ``timesteps``.
    """
    _measure_models(input.samples, [(model_id, input.model, output.measurements)], measure, diffusion, device)


def measure_subset(
    input: Paths, output: Paths, *, model_ids: Sequence[str], measure: Mapping[str, Any],
    diffusion: Mapping[str, Any], device: str,
) -> None:
    """The seeds of one retraining subset, one after the other in this process: ``measurements`` (a list in seed
    order) as :func:`measure_model` writes them; ``models`` holds the files of every seed's model."""
    dirs = list(dict.fromkeys(Path(f).parent for f in input.models))  # one folder per model, in seed order
    models = [[f for f in input.models if Path(f).parent == d] for d in dirs]
    _measure_models(input.samples, list(zip(model_ids, models, output.measurements, strict=True)), measure,
                    diffusion, device)


def _measure_models(samples_file: str, jobs: Sequence[tuple[str, Any, str]], measure: Mapping[str, Any],
                    diffusion: Mapping[str, Any], device: str) -> None:
    """Measure the samples under each model of ``jobs``: (model id, the model's files, output file)."""
    device = select_device(device)
    art = read_samples(samples_file)
    samples = torch.from_numpy(art["samples"])
    traj = torch.from_numpy(art["trajectories"]) if "trajectories" in art.data else None
    schedule = Schedule.from_config(diffusion)
    for model_id, model_files, out_file in jobs:
        source = model_dir(model_files)
        model = load_model(source, device)
        values = measure_samples(model, schedule, samples, measure, traj, device, model_id=model_id)
        info = read_json(source / "train_info.json")
        subset = -1 if info["subset"] is None else int(info["subset"])  # -1: full data or a counterfactual run
        seed_index = -1 if info["seed_index"] is None else int(info["seed_index"])
        for name in measure["measurements"]:
            rel = np.abs(values[f"{name}_se"] / values[name])
            log.info("%s %s: mean %.5g, median relative s.e. %.3g", model_id, name, float(np.mean(values[name])),
                     float(np.median(rel)))
        write_h5(
            out_file,
            values,
            config={"measure": dict(measure), "diffusion": dict(diffusion)},
            attrs={"model_id": model_id, "subset": subset, "seed_index": seed_index, "seed": int(info["seed"]),
                   "timesteps": list(measure["timesteps"]),
                   "common_random_numbers": bool(measure["common_random_numbers"])},
        )


def gather_measurements(input: Paths, output: Paths, *, timesteps: Sequence[int]) -> None:
    """``measurements.h5``: the per-model files stacked, in input order.

    Datasets: each measurement ``[n_models, n_samples]`` (``timestep_loss``: ``[n_models, n_samples, n_steps]``)
    and its ``_se``; ``model_id`` str ``[n_models]``, ``subset`` int ``[n_models]`` (-1 = full model),
    ``seed_index`` and ``seed`` int ``[n_models]``; ``timesteps`` ``[n_steps]`` (paper steps).
    """
    arts = [read_h5(p) for p in input.measurements]
    names = sorted(arts[0].data)
    for a in arts[1:]:
        if sorted(a.data) != names:
            raise ValueError(f"{a.path} holds {sorted(a.data)}, {arts[0].path} holds {names}")
    data: dict[str, Any] = {name: np.stack([a[name] for a in arts]) for name in names}
    data["model_id"] = np.asarray([a.attrs["model_id"] for a in arts])
    for key in ("subset", "seed_index", "seed"):
        data[key] = np.asarray([a.attrs[key] for a in arts], dtype=np.int64)
    data["timesteps"] = np.asarray(timesteps, dtype=np.int64)
    write_h5(output.measurements, data, config={"measure": {"timesteps": list(timesteps)}},
             attrs={"n_models": len(arts)})
