"""A method added through the scoring seam: the plain gradient dot product (identity preconditioner)."""

from __future__ import annotations

import math

import numpy as np
import torch

from diffattr.curvature import FlatEps
from diffattr.diffusion import Schedule
from diffattr.gradients import measurement_gradients, training_gradients
from diffattr.models import build_unet
from diffattr.queries import queries
from diffattr.scores.base import GradientInputs
from diffattr.scores.registry import (
    METHODS,
    counterfactual_methods,
    evaluated_methods,
    label,
    method_sections,
)


def _inputs() -> GradientInputs:
    torch.manual_seed(0)
    wrapper = FlatEps(build_unet("unet_tiny")).eval()
    return GradientInputs(wrapper, Schedule.linear(), torch.rand(7, 1, 8, 8) * 2 - 1, torch.rand(3, 1, 8, 8) * 2 - 1,
                          None)


def test_graddot_scores_are_dot_products_of_the_shared_gradients():
    inputs = _inputs()
    sections = {"influence": {"gradient_mc_samples": 2, "batch_size": 4, "seed": 3, "query_compression": "int8",
                              "bank_memory_mb": 64}, "diffusion": {}, "train.hflip": False}
    files, timings = METHODS["graddot"].load()(sections, inputs, queries(["loss", "elbo"], []), progress=False)
    assert [(f.method, f.query, f.predicts) for f in files] == [("graddot", "loss", "loss"), ("graddot", "elbo", "elbo")]
    # the draws K-FAC, TRAK and D-TRAK use: training seed + 1, query seed + 2
    train = training_gradients(inputs.wrapper, inputs.images, torch.arange(7), inputs.schedule, 2, 4)
    for f in files:
        q = measurement_gradients(inputs.wrapper, inputs.samples, f.query, inputs.schedule, 2, 5, batch_size=4)
        assert f.scores.shape == (1, 3, 7) and math.isnan(f.dampings[0]) and f.default_damping is None
        np.testing.assert_allclose(f.scores[0], (q @ train.T).numpy(), rtol=1e-5, atol=1e-6 * float((q @ train.T).abs().max()))
    assert timings["passes"] == 1


def test_the_registry_entry_is_all_the_workflow_needs():
    from diffattr.config import validate_config

    cfg = validate_config({"experiment": "t", "evaluate": {"methods": ["kfac", "graddot"]}})
    assert evaluated_methods(cfg) == ["kfac_mc_expand", "graddot"]
    assert "graddot" not in [m for m in counterfactual_methods(cfg)]
    assert set(method_sections(cfg, "graddot")) == {"influence", "diffusion", "train.hflip"}
    assert label("graddot") == "Gradient dot product"
    assert label("ekfac_mc_expand") == "EK-FAC (mc, expand)" and label("kfac_mc_expand") == "K-FAC"
