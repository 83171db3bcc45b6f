"""Linear data-modelling score (LDS; Park et al., 2023) as used in the paper (§4).

For a generated sample x and M random subsets S_m of the training set (each trained with K seeds):

- predicted change of the measurement when training on S_m: Σ_{j ∉ S_m} τ_j / N (the removed examples' scores;
  see :mod:`diffattr.scores.io` for the sign and scale of τ);
- actual change: mean over the K seeds of m(θ_{S_m}, x), minus m(θ*, x) (a constant per sample);
- LDS(x) = Spearman correlation over m of the two; reported as mean ± standard error over samples.

The exact-retraining oracle predicts the mean over the other seeds with one seed's models (averaged over seeds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import sem, spearmanr

from diffattr.io import Artefact
from diffattr.queries import parse_query


@dataclass(frozen=True)
class LDSResult:
    """LDS per sample ``[S]`` and its mean and standard error over samples."""

    per_sample: np.ndarray

    @property
    def mean(self) -> float:
        return float(np.nanmean(self.per_sample))

    @property
    def se(self) -> float:
        x = self.per_sample[np.isfinite(self.per_sample)]
        return float(sem(x)) if len(x) > 1 else float("nan")


def spearman_per_column(pred: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``pred`` and ``actual`` ``[M, S]`` -> ``[S]`` (NaN if constant)."""
    out = np.full(pred.shape[1], np.nan)
    for i in range(pred.shape[1]):
        if np.ptp(pred[:, i]) > 0 and np.ptp(actual[:, i]) > 0:
            out[i] = spearmanr(pred[:, i], actual[:, i]).statistic
    return out


def predicted_changes(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Predicted measurement change per subset: Σ_{j removed} τ_j / N.

    Args:
        scores: ``[..., S, N]``.
        masks: ``[M, N]`` bool, True = kept in the subset.

    Returns:
        ``[..., M, S]``.
    """
    n = masks.shape[1]
    removed = (~masks).astype(scores.dtype)
    return np.einsum("...sn,mn->...ms", scores, removed) / n


def target_values(meas: Artefact, target: str) -> np.ndarray:
    """Per-model values ``[n_models, S]`` of a target (``loss``, ``elbo``, ``trajectory``, ``timestep_loss_t<k>``)
    from ``measurements.h5``."""
    query = parse_query(target)
    if query.timestep is not None:
        steps = [int(s) for s in meas["timesteps"]]
        if query.measurement not in meas.data or query.timestep not in steps:
            have = steps if query.measurement in meas.data else "none"
            raise ValueError(f"target {target!r}: measurements.h5 has timestep losses at {have}")
        return meas[query.measurement][:, :, steps.index(query.timestep)]
    if target not in meas.data:
        raise ValueError(f"target {target!r} was not measured (measure.measurements); have {sorted(meas.data)}")
    return meas[target]


def actual_by_subset(values: np.ndarray, subset: np.ndarray, seed_index: np.ndarray, n_subsets: int) -> np.ndarray:
    """Per-model measurements ``[n_models, S]`` -> ``[M, K, S]`` (models ordered by subset and seed index)."""
    k = int(seed_index.max()) + 1
    out = np.full((n_subsets, k, values.shape[1]), np.nan)
    for row, (m, s) in enumerate(zip(subset, seed_index, strict=True)):
        if m >= 0:
            out[m, s] = values[row]
    if np.isnan(out).any():
        raise ValueError("measurements are missing for some (subset, seed) models")
    return out


def lds(scores: np.ndarray, masks: np.ndarray, actual: np.ndarray) -> LDSResult:
    """LDS of one score matrix ``[S, N]`` against actual measurements ``[M, K, S]``."""
    return LDSResult(spearman_per_column(predicted_changes(scores, masks), actual.mean(axis=1)))


def oracle_lds(actual: np.ndarray) -> LDSResult:
    """Exact retraining: seed k's measurements against the mean of the other seeds', averaged over k. ``[M, K, S]``."""
    k = actual.shape[1]
    if k < 2:
        raise ValueError("the exact-retraining oracle needs at least 2 seeds per subset")
    per_seed = []
    for s in range(k):
        others = np.delete(actual, s, axis=1).mean(axis=1)
        per_seed.append(spearman_per_column(actual[:, s], others))
    return LDSResult(np.nanmean(np.stack(per_seed), axis=0))
