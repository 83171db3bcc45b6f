"""K-FAC / EK-FAC curvature (curvlinops): fitting, storage, damped preconditioning."""

from diffattr.curvature.data import FlatEps, kfac_parameters
from diffattr.curvature.kfac import (
    Approx,
    Curvature,
    Fisher,
    Variant,
    build_operator,
    curvature_from_operator,
    fit_curvature,
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
    "fit_curvature",
    "kfac_parameters",
    "load_curvature",
    "save_curvature",
]
