"""K-FAC / EK-FAC curvature (curvlinops): fitting, storage, damped preconditioning."""

from diffattr.curvature.draws import FlatEps, example_draws, kfac_parameters, noisy_inputs
from diffattr.curvature.kfac import (
    Approx,
    Curvature,
    Fisher,
    Variant,
    build_operator,
    curvature_from_operator,
    fit_curvature,
    fit_curvature_stage,
    load_curvature,
    save_curvature,
)

__all__ = [
    "Approx",
    "Curvature",
    "FlatEps",
    "Fisher",
    "Variant",
    "build_operator",
    "curvature_from_operator",
    "example_draws",
    "fit_curvature",
    "fit_curvature_stage",
    "kfac_parameters",
    "load_curvature",
    "noisy_inputs",
    "save_curvature",
]
