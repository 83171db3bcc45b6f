"""Stages of ``rules/influence.smk``: the curvature of each K-FAC variant, then every variant × query scored in one
pass over the training set."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from diffattr.curvature import Variant, load_curvature, save_curvature
from diffattr.curvature import fit_curvature as fit_kfac
from diffattr.data import read_train
from diffattr.data.space import to_model_space
from diffattr.diffusion import Schedule
from diffattr.models import load_model
from diffattr.queries import parse_query
from diffattr.runtime import select_device
from diffattr.scores.base import GradientArgs, GradientInputs, write_score_files
from diffattr.scores.influence import score_kfac
from diffattr.scores.shards import gather_score_shards, shard_bounds
from diffattr.stages import Paths, model_dir

log = logging.getLogger(__name__)


def fit_curvature(
    input: Paths, output: Paths, *, variant: str, fit: Mapping[str, Any], diffusion: Mapping[str, Any],
    hflip: bool, device: str,
) -> None:
    """``curvature/{variant}.h5``: (E)K-FAC of the full model over every training example × its draws.

    ``fit``: ``curvature_mc_samples``, ``batch_size`` and ``seed`` of the ``influence`` section (nothing else of
    it shapes the fit).
    """
    device = select_device(device)
    model = load_model(model_dir(input.model), device)
    images = to_model_space(read_train(input.train)["images"]).to(device)
    curv = fit_kfac(model, images, Schedule.from_config(diffusion), Variant.from_name(variant),
               fit["curvature_mc_samples"], fit["batch_size"], fit["seed"], hflip=bool(hflip),
               device=device)
    log.info("fitted %s: %d layers, %d parameters", variant, len(curv.layers), sum(curv.sizes))
    save_curvature(curv, output.curvature, config={"influence": dict(fit), "diffusion": dict(diffusion)})


def compute_kfac_scores(
    input: Paths, output: Paths, *, shard: int, queries: Mapping[str, Sequence[str]], influence: Mapping[str, Any],
    diffusion: Mapping[str, Any], hflip: bool, device: str,
) -> None:
    """Shard ``shard`` of ``influence.sample_shards``: ``{variant}/{query}.h5`` for every curvature in
    ``input.curvatures`` and its queries (``queries``: variant -> query names), for one range of the samples.

    Training gradients are computed once per pass over the training set; there is one pass unless this shard's
    query bank exceeds ``influence.bank_memory_mb``. ``gather_kfac_scores`` joins the shards.
    """
    device = select_device(device)
    t0 = time.perf_counter()
    inputs = GradientInputs.load(model_dir(input.model), input.train, input.samples, diffusion, device)
    n_samples = inputs.samples.shape[0]
    s0, s1 = shard_bounds(n_samples, int(influence["sample_shards"]))[int(shard)]
    curvatures = [load_curvature(p, device) for p in input.curvatures]
    load_s = time.perf_counter() - t0
    files, timings = score_kfac(curvatures, inputs.shard(s0, s1), {v: [parse_query(q) for q in qs]
                                                                   for v, qs in queries.items()},
                                GradientArgs.from_sections(influence, hflip), influence["dampings"],
                                influence["default_damping"], query_bank=influence["query_bank"])
    timings = {"load": load_s, **timings}
    files = [dataclasses.replace(f, attrs={**f.attrs, "samples": [s0, s1], "n_samples": n_samples}) for f in files]
    write_score_files(files, output.scores, timings)
    log.info("shard %d (samples %d..%d of %d), timings: %s", shard, s0, s1, n_samples,
             {k: round(v, 2) for k, v in timings.items()})


def gather_kfac_scores(input: Paths, output: Paths) -> None:
    """``scores/{variant}/{query}.h5``: the sample shards of ``compute_kfac_scores`` joined along the samples."""
    gather_score_shards(input.shards, output.scores)


def compute_kfac_grad_scores(
    input: Paths, output: Paths, *, mc_samples: int, queries: Sequence[str], influence: Mapping[str, Any],
    diffusion: Mapping[str, Any], hflip: bool, device: str,
) -> None:
    """``scores/{variant}_grad{mc_samples}/{query}.h5``: :func:`compute_kfac_scores` with ``mc_samples`` (t, ε)
    draws per gradient instead of the first of ``influence.gradient_mc_samples`` (paper Figs. 7/9)."""
    device = select_device(device)
    inputs = GradientInputs.load(model_dir(input.model), input.train, input.samples, diffusion, device)
    args = dataclasses.replace(GradientArgs.from_sections(influence, hflip), mc_samples=int(mc_samples))
    files, timings = score_kfac([load_curvature(p, device) for p in input.curvatures], inputs, [parse_query(q) for q in queries],
                                args, influence["dampings"], influence["default_damping"],
                                query_bank=influence["query_bank"])
    write_score_files([dataclasses.replace(f, method=f"{f.method}_grad{mc_samples}") for f in files], output.scores,
                      timings)
    log.info("timings: %s", {k: round(v, 2) for k, v in timings.items()})
