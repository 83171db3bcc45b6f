"""Stage of ``rules/baselines.smk``: the scores of any registered method other than K-FAC
(:data:`diffattr.scores.registry.METHODS`: TRAK, D-TRAK, the gradient dot product, CLIP)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from diffattr.queries import parse_query
from diffattr.runtime import select_device
from diffattr.scores.base import GradientInputs, ImageInputs, write_score_files
from diffattr.scores.registry import METHODS
from diffattr.scores.shards import FeatureFiles, shard_bounds, write_features
from diffattr.scores.trak import feature_args, make_projector, train_features, trak_args
from diffattr.stages import Paths, model_dir

log = logging.getLogger(__name__)


def compute_features(
    input: Paths, output: Paths, *, gradient_output: str, shard: int, args: Mapping[str, Any], device: str
) -> None:
    """``shards/features/{gradient_output}/{shard}.h5``: TRAK's projected training features (``loss`` for TRAK,
    ``square_norm`` for D-TRAK) of one range of ``trak.feature_shards`` ranges of the training examples."""
    device = select_device(device)
    inputs = GradientInputs.load(model_dir(input.model), input.train, input.samples, args["diffusion"], device)
    targs = trak_args(args, gradient_output)
    n = inputs.images.shape[0]
    start, end = shard_bounds(n, int(args["trak"]["feature_shards"]))[int(shard)]
    projector = make_projector(inputs.n_params, targs.projection_dim, targs.projection_seed, device)
    t0 = time.perf_counter()
    features = train_features(inputs, targs, projector, start=start, end=end)
    write_features(output.features, features, start, end, n, feature_args(targs))
    log.info("features of training examples %d..%d of %d in %.1f s", start, end, n, time.perf_counter() - t0)


def compute_scores(
    input: Paths, output: Paths, *, method: str, queries: Sequence[str], args: Mapping[str, Any], device: str
) -> None:
    """``scores/{method}/{query}.h5`` for every query, from the method's scorer and the config values it declares
    (``args``: exactly :attr:`~diffattr.scores.registry.MethodInfo.sections`); a method with training features
    (:attr:`~diffattr.scores.registry.MethodInfo.features`) reads them from ``input.features``."""
    info = METHODS[method]
    device = select_device(device)
    if info.needs_model:
        inputs: Any = GradientInputs.load(model_dir(input.model), input.train, input.samples, args["diffusion"], device)
    else:
        inputs = ImageInputs.load(input.train, input.samples, device)
    cache = None
    if info.features:
        cache = FeatureFiles(input.features, f"{info.features}_features", feature_args(trak_args(args, info.features)))
    files, timings = info.load()(args, inputs, [parse_query(q) for q in queries], cache=cache)
    write_score_files(files, output.scores, timings)
    log.info("%s timings: %s", method, {k: round(v, 2) for k, v in timings.items()})
