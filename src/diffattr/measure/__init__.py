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
from diffattr.measure.oracle import (
    crn_draws,
    gather_measurements,
    measure_model,
    measure_samples,
    read_measurements,
)

__all__ = [
    "MEASUREMENTS",
    "ORIENTATION",
    "crn_draws",
    "elbo",
    "gather_measurements",
    "loss",
    "measure_model",
    "measure_samples",
    "orientation",
    "read_measurements",
    "relative_sign",
    "timestep_loss",
    "trajectory",
]
