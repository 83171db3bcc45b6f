"""Measurement functions (differentiable) and the measurement oracles."""

from diffattr.measure.functions import (
    MEASUREMENTS,
    ORIENTATION,
    elbo,
    loss,
    orientation,
    relative_sign,
    timestep_loss,
    trajectory,
)
from diffattr.measure.oracle import measure_samples, read_measurements

__all__ = [
    "MEASUREMENTS",
    "ORIENTATION",
    "elbo",
    "loss",
    "measure_samples",
    "orientation",
    "read_measurements",
    "relative_sign",
    "timestep_loss",
    "trajectory",
]
