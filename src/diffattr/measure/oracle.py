"""Measurement oracles: every measurement of every generated sample under one model (used by the stages
``measure_model`` and ``gather_measurements``), and the reader of the gathered ``measurements.h5``.

Common random numbers (``measure.common_random_numbers``, on by default): the Monte-Carlo draws (t, ε) of sample
``i`` come from a generator seeded with ``(measure.seed, i)`` only, so every model is evaluated on identical draws
and differences between retrained models are not drowned in estimator noise. Off, the seed also takes the model
id, so each model gets independent draws (each oracle is then an unbiased estimate on its own, and the LDS of
every method, the exact-retraining oracle included, falls as the estimator noise enters the actual changes).

Draw counts: ``measure.mc_samples`` (t, ε) draws for the loss and the ELBO (one forward pass serves both), and
``measure.timestep_mc_samples`` ε draws for *each* timestep loss (5000 of each in the paper, appendix G.5; one count,
or one per timestep), from their own stream and shared across the timesteps (a timestep with fewer draws takes the
first ones). The timesteps listed in ``measure.timestep_antithetic`` take their draws in antithetic pairs ε, -ε
(:func:`diffattr.diffusion.draws.timestep_eps`); their standard error is that of the pair means.

Timestep sampling: the paper's oracles draw t uniformly (``measure.t_importance_offset: null``). With an offset c,
t is importance-sampled with ``p_t ∝ 1/(t + c)`` and each term weighted by ``1/(T p_t)``
(:func:`diffattr.diffusion.draws.importance_weights`): still unbiased for the loss and the ELBO, with far less
noise in the differences between models, which sit at small t (on the quickstart, 128 such draws with c = 20
match 256 uniform ones on the loss and have 0.44x their noise on the ELBO: ``bench/oracle_variance.py``). The standard
errors are those of the weighted terms.

Precision: ``measure.precision`` (fp32, tf32, bf16 autocast) and ``measure.compile`` apply to the U-Net's forward
pass only; the terms and their means are computed in float32 (float64 for the means) at every setting.

Batching: the forward passes run in batches of ``measure.batch_size`` draws that span samples and timesteps
(:func:`_stream`), so a small per-sample or per-timestep draw count still fills the device; each draw's term is
exactly what the per-sample computation with the same draws gives (to float rounding).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import sem
from tqdm.auto import tqdm

from diffattr.config import timestep_draw_counts
from diffattr.diffusion import Schedule
from diffattr.diffusion.ddpm import EpsModel, eps_fn
from diffattr.diffusion.draws import (
    crn_draws,
    importance_weights,
    model_key,
    noisy,
    timestep_draws,
    timestep_eps,
)
from diffattr.io import Artefact, read_h5
from diffattr.measure import functions as F

log = logging.getLogger(__name__)


def _mean_se(terms: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error (``scipy.stats.sem``) over the last dim."""
    mean = terms.mean(-1).double().cpu().numpy()
    if terms.shape[-1] < 2:
        return mean, np.full_like(mean, np.nan)
    return mean, sem(terms.double().cpu().numpy(), axis=-1)


def _stream(pieces, bs: int, eps_model, schedule: Schedule, device, n_keys: int, progress: bool, desc: str,
            outputs) -> dict[Any, dict[str, torch.Tensor]]:
    """Forward passes over pieces of Monte-Carlo draws, batched across pieces (samples, timesteps).

    Args:
        pieces: ``(key, x0 [C, H, W], t [m], eps [m, C, H, W])`` with m <= ``bs``, in order; the pieces of one key
            are consecutive.
        outputs: ``(x0, t, eps, x_t, pred)`` with one draw per row (``[R, ...]``, ``t``/``eps`` as ``[R, 1, ...]``)
            -> ``{name: [R] terms}``.

    Returns:
        ``{key: {name: terms}}``, each key's terms concatenated in draw order.
    """
    done: dict[Any, dict[str, list[torch.Tensor]]] = {}
    pending: list = []
    bar = tqdm(total=n_keys, desc=desc, disable=not progress, mininterval=2)

    def flush() -> None:
        x0 = torch.cat([p[1].expand(len(p[2]), *p[1].shape) for p in pending]).to(device)
        t = torch.cat([p[2] for p in pending]).to(device)[:, None]
        eps = torch.cat([p[3] for p in pending]).to(device)[:, None]
        x_t = noisy(schedule, x0, t, eps)
        pred = F._flat_eps(eps_model, x_t, t)
        values = outputs(x0, t, eps, x_t, pred)
        start = 0
        for key, _, tt, _ in pending:
            if key not in done:
                done[key] = {name: [] for name in values}
                bar.update()
            for name, v in values.items():
                done[key][name].append(v[start : start + len(tt)])
            start += len(tt)
        pending.clear()

    rows = 0
    for piece in pieces:
        if pending and rows + len(piece[2]) > bs:
            flush()
            rows = 0
        pending.append(piece)
        rows += len(piece[2])
    if pending:
        flush()
    bar.close()
    return {k: {name: torch.cat(v) for name, v in d.items()} for k, d in done.items()}


def _eps_at_precision(model: torch.nn.Module, precision: str, compile_option: bool | str,
                      device: torch.device) -> EpsModel:
    """The U-Net's ε-prediction at ``measure.precision`` (compiled with ``measure.compile``), returned in float32
    so that the terms built from it (squared errors, Gaussian KLs) and their means are computed in float32."""
    # imported here, not at the top: diffattr.models imports diffusers (3-4 s), which the CPU-only jobs that only
    # read measurements.h5 (LDS, counterfactual selection and summary, figures) would otherwise pay at start-up
    from diffattr.models import compile_unet, precision_context

    eps_model = eps_fn(compile_unet(model, compile_option))

    def run(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with precision_context(precision, device.type):
            return eps_model(x, t).float()

    return run


def measure_samples(
    model: torch.nn.Module,
    schedule: Schedule,
    samples: torch.Tensor,
    measure_cfg: Mapping[str, Any],
    trajectories: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    model_id: str | None = None,
    sample_ids: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Compute the configured measurements for samples ``[S, C, H, W]`` under one model (inference mode).

    ``model_id`` seeds the model's own draws when ``measure.common_random_numbers`` is off (required then).
    ``sample_ids``: the samples' indices in the study's ``samples.h5`` (default ``0..S-1``), which key their
    Monte-Carlo draws; measuring a few of the samples with their ids gives what measuring all of them gives for
    those (the counterfactual runs are measured so, on the samples they were retrained for).

    Returns:
        ``{name: [S]}`` (``timestep_loss``: ``[S, n_steps]``) and ``{name}_se`` Monte-Carlo standard errors.
    """
    names = measure_cfg["measurements"]
    n, bs, seed = measure_cfg["mc_samples"], measure_cfg["batch_size"], measure_cfg["seed"]
    step_counts = timestep_draw_counts(measure_cfg)
    antithetic = set(measure_cfg.get("timestep_antithetic") or [])
    offset = measure_cfg.get("t_importance_offset")
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
    eps_model = _eps_at_precision(model, measure_cfg.get("precision", "fp32"), measure_cfg.get("compile", False),
                                  torch.device(device))
    S, shape = samples.shape[0], tuple(samples.shape[1:])
    ids = list(range(S)) if sample_ids is None else [int(i) for i in sample_ids]
    if len(ids) != S:
        raise ValueError(f"sample_ids has {len(ids)} entries for {S} samples")
    out: dict[str, list] = {}
    with torch.inference_mode():
        if "loss" in names or "elbo" in names:
            # one forward pass serves loss and ELBO; the batches run across samples
            def loss_pieces():
                for i in range(S):
                    t_all, eps_all = crn_draws(seed, ids[i], n, shape, T, key, offset)
                    for c in range(0, n, bs):
                        yield i, samples[i], t_all[c : c + bs], eps_all[c : c + bs]

            def loss_terms(x0, t, eps, x_t, pred):
                w = importance_weights(t[:, 0], T, offset).to(pred.device)
                return {"loss": w * F.loss_from_pred(eps, pred)[:, 0],
                        "elbo": w * F.elbo_from_pred(schedule, x0, t, x_t, pred)[:, 0]}

            terms = _stream(loss_pieces(), bs, eps_model, schedule, device, S, progress, "measure loss/ELBO",
                            loss_terms)
            for name in ("loss", "elbo"):
                if name in names:
                    out[name] = [_mean_se(terms[i][name]) for i in range(S)]
        if "timestep_loss" in names:
            # every (sample, timestep) in one stream of batches; a sample's ε draws are shared across its timesteps
            def step_pieces():
                for i in range(S):
                    shared = timestep_draws(seed, ids[i], max(step_counts), shape, key)
                    for k, step in enumerate(steps):
                        eps = timestep_eps(shared, step_counts[k], step in antithetic)
                        for c in range(0, len(eps), bs):
                            part = eps[c : c + bs]
                            yield (i, k), samples[i], torch.full((len(part),), step - 1, dtype=torch.long), part

            terms = _stream(step_pieces(), bs, eps_model, schedule, device, S * len(steps), progress,
                            "measure timestep losses",
                            lambda x0, t, eps, x_t, pred: {"l": F.loss_from_pred(eps, pred)[:, 0]})

            def step_mean_se(i: int, k: int) -> tuple[np.ndarray, np.ndarray]:
                values = terms[(i, k)]["l"]
                if steps[k] in antithetic:  # the pairs are the independent draws: their means
                    values = values.view(2, -1).mean(0)
                return _mean_se(values)

            out["timestep_loss"] = [tuple(np.stack(v) for v in zip(*[step_mean_se(i, k) for k in range(len(steps))],
                                                                   strict=True))
                                    for i in range(S)]
        if "trajectory" in names:
            for i in tqdm(range(S), desc="measure trajectories", disable=not progress, mininterval=2):
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
