"""Stages of ``rules/influence.smk``: the curvature of each K-FAC variant, then every variant × query scored in one
pass over the training set."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from diffattr.curvature import Variant, load_curvature, save_curvature
from diffattr.curvature import fit_curvature as fit
from diffattr.data import read_train
from diffattr.data.space import to_model_space
from diffattr.diffusion import Schedule
from diffattr.models import load_model
from diffattr.queries import parse_query
from diffattr.runtime import select_device
from diffattr.scores.base import GradientArgs, GradientInputs, ScoreFile, score_gradients, write_score_files
from diffattr.scores.influence import KFACPreconditioner
from diffattr.stages import Paths, model_dir

log = logging.getLogger(__name__)


def fit_curvature(
    input: Paths, output: Paths, *, variant: str, influence: Mapping[str, Any], diffusion: Mapping[str, Any],
    hflip: bool, device: str,
) -> None:
    """``curvature/{variant}.h5``: (E)K-FAC of the full model over every training example × its draws."""
    device = select_device(device)
    model = load_model(model_dir(input.model), device)
    images = to_model_space(read_train(input.train)["images"]).to(device)
    curv = fit(model, images, Schedule.from_config(diffusion), Variant.from_name(variant),
               influence["curvature_mc_samples"], influence["batch_size"], influence["seed"], hflip=bool(hflip),
               device=device)
    log.info("fitted %s: %d layers, %d parameters", variant, len(curv.layers), sum(curv.sizes))
    save_curvature(curv, output.curvature, config={"influence": dict(influence), "diffusion": dict(diffusion)})


@dataclass
class KFACArgs:
    """K-FAC influence arguments saved with every score file: the gradients, the damping sweep, the curvature."""

    gradients: GradientArgs
    dampings: list[float]
    default_damping: float
    curvature: dict[str, Any] = field(default_factory=dict)


def compute_kfac_scores(
    input: Paths, output: Paths, *, queries: Sequence[str], influence: Mapping[str, Any],
    diffusion: Mapping[str, Any], hflip: bool, device: str,
) -> None:
    """``scores/{variant}/{query}.h5`` for every curvature in ``input.curvatures`` and every query.

    Training gradients are computed once per pass over the training set; there is one pass unless the query bank
    exceeds ``influence.bank_memory_mb``.
    """
    device = select_device(device)
    t0 = time.perf_counter()
    inputs = GradientInputs.load(model_dir(input.model), input.train, input.samples, diffusion, device)
    args = GradientArgs.from_sections(influence, hflip)
    curvatures = [load_curvature(p) for p in input.curvatures]
    pre = {c.variant.name: KFACPreconditioner(c, list(influence["dampings"]), args.compression) for c in curvatures}
    load_s = time.perf_counter() - t0
    qs = [parse_query(q) for q in queries]
    scores, timings = score_gradients(
        pre, qs, inputs.samples.shape[0], lambda q, s0, s1: inputs.query_gradients(q, s0, s1, args),
        lambda idx: inputs.training_gradients(idx, args), inputs.images.shape[0], args)
    timings = {"load": load_s, **timings}
    files = [ScoreFile(m, q.name, scores[(m, q.name)], p.dampings, float(influence["default_damping"]), q.name,
                       KFACArgs(args, list(p.dampings), float(influence["default_damping"]), p.curvature.args))
             for m, p in pre.items() for q in qs]
    write_score_files(files, output.scores, timings)
    log.info("timings: %s", {k: round(v, 2) for k, v in timings.items()})
