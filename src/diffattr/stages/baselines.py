"""Stage of ``rules/baselines.smk``: the scores of any registered method other than K-FAC
(:data:`diffattr.scores.registry.METHODS`: TRAK, D-TRAK, the gradient dot product, CLIP)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from diffattr.queries import parse_query
from diffattr.runtime import select_device
from diffattr.scores.base import GradientInputs, ImageInputs, write_score_files
from diffattr.scores.registry import METHODS
from diffattr.stages import Paths, model_dir

log = logging.getLogger(__name__)


def compute_scores(
    input: Paths, output: Paths, *, method: str, queries: Sequence[str], args: Mapping[str, Any], device: str
) -> None:
    """``scores/{method}/{query}.h5`` for every query, from the method's scorer and the config values it declares
    (``args``: exactly :attr:`~diffattr.scores.registry.MethodInfo.sections`)."""
    info = METHODS[method]
    device = select_device(device)
    if info.needs_model:
        inputs: Any = GradientInputs.load(model_dir(input.model), input.train, input.samples, args["diffusion"], device)
    else:
        inputs = ImageInputs.load(input.train, input.samples, device)
    files, timings = info.load()(args, inputs, [parse_query(q) for q in queries])
    write_score_files(files, output.scores, timings)
    log.info("%s timings: %s", method, {k: round(v, 2) for k, v in timings.items()})
