"""Stages of ``rules/measure.smk``: every generated sample measured under one model (or the seeds of one retraining
subset), then all models gathered; the counterfactual runs on the samples they were retrained for."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from diffattr.diffusion import Schedule
from diffattr.evaluate.counterfactual import run_targets
from diffattr.io import read_h5, read_json, write_h5
from diffattr.measure import measure_samples
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
    _measure_models(input.samples, list(zip(model_ids, _by_model(input.models), output.measurements, strict=True)),
                    measure, diffusion, device)


def measure_counterfactuals(
    input: Paths, output: Paths, *, model_ids: Sequence[str], measure: Mapping[str, Any],
    diffusion: Mapping[str, Any], device: str,
) -> None:
    """``measurements/counterfactual.h5``: the loss of every counterfactual run (``models``: their files, in run
    order) on the samples its evaluation reads (:func:`diffattr.evaluate.counterfactual.run_targets`: a method's
    run on its own sample), with the draws the full model's oracle used there. All runs in this one process: each
    is a few samples' work, which a job of its own would spend mostly on starting.

    Datasets: ``loss`` and ``loss_se`` ``[R, S]`` (NaN on the samples a run is not evaluated on), ``model_id``
    ``[R]``.
    """
    device = select_device(device)
    samples = torch.from_numpy(read_samples(input.samples)["samples"])
    targets = run_targets(read_h5(input.removals), len(samples))
    models = _by_model(input.models)
    if not len(targets) == len(models) == len(model_ids):
        raise ValueError(f"{input.removals} plans {len(targets)} counterfactual runs, but {len(models)} models "
                         f"({len(model_ids)} ids) were given")
    schedule = Schedule.from_config(diffusion)
    loss_measure = {**measure, "measurements": ["loss"]}  # what the counterfactual evaluation reads
    loss = np.full((len(models), len(samples)), np.nan)
    loss_se = loss.copy()
    for r, (model_id, files, on) in enumerate(zip(tqdm(model_ids, desc="measure counterfactual runs", mininterval=2),
                                                  models, targets, strict=True)):
        values = measure_samples(_load(files, device), schedule, samples[on], loss_measure,
                                 device=device, progress=False, model_id=model_id, sample_ids=on)
        loss[r, on], loss_se[r, on] = values["loss"], values["loss_se"]
        log.info("%s loss on samples %s: %s", model_id, on, np.round(values["loss"], 5).tolist())
    write_h5(output.measurements, {"loss": loss, "loss_se": loss_se, "model_id": np.asarray(model_ids)},
             config={"measure": loss_measure, "diffusion": dict(diffusion)},
             attrs={"common_random_numbers": bool(measure["common_random_numbers"])})


def _load(model_files: Sequence[str], device: torch.device) -> torch.nn.Module:
    """The model whose files these are."""
    # imported here, not at the top: diffattr.models imports diffusers (3-4 s at start-up), which gather_measurements,
    # a CPU job on the way from the fleet to the LDS, does not need
    from diffattr.models import load_model

    return load_model(model_dir(model_files), device)


def _by_model(files: Sequence[str]) -> list[list[str]]:
    """Model files grouped by their folder (one per model), in input order."""
    dirs = list(dict.fromkeys(Path(f).parent for f in files))
    return [[f for f in files if Path(f).parent == d] for d in dirs]


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
        model = _load(model_files, device)
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
