"""Linear data-modelling score (LDS; Park et al., 2023) as used in the paper (§4).

For a generated sample x and M random subsets S_m of the training set (each trained with K seeds):

- predicted change of the measurement when training on S_m: Σ_{j ∉ S_m} τ_j / N (the removed examples' scores;
  see :mod:`diffattr.scores.io` for the sign and scale of τ);
- actual change: mean over the K seeds of m(θ_{S_m}, x), minus m(θ*, x) (a constant per sample);
- LDS(x) = Spearman correlation over m of the two; reported as mean ± standard error over samples.

The exact-retraining oracle predicts the mean over the other seeds with one seed's models (averaged over seeds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata, sem

from diffattr.io import Artefact
from diffattr.queries import parse_query
from diffattr.scores.io import damping_index, read_scores, target_sign
from diffattr.scores.registry import family


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
    """Spearman correlation of each column of ``pred`` and ``actual`` ``[M, S]`` -> ``[S]`` (NaN if constant or NaN).

    Pearson's r of the ranks (ties get their average rank), as :func:`scipy.stats.spearmanr` computes it, for all
    columns at once: ``spearmanr`` has no column-paired form, and one call per column cost the quickstart's
    ``compute_lds`` 40 s (80,000 calls).
    """
    out = np.full(pred.shape[1], np.nan)
    ok = (np.ptp(pred, axis=0) > 0) & (np.ptp(actual, axis=0) > 0)  # False for NaN columns
    rp, ra = rankdata(pred[:, ok], axis=0), rankdata(actual[:, ok], axis=0)
    rp, ra = rp - rp.mean(axis=0), ra - ra.mean(axis=0)
    out[ok] = (rp * ra).sum(axis=0) / np.sqrt((rp**2).sum(axis=0) * (ra**2).sum(axis=0))
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


def retraining_correlation(actual_from: np.ndarray, actual_to: np.ndarray) -> LDSResult:
    """How well retraining predicts a measurement from another one's actual changes (paper Figs. 12 and 14).

    Seed k's models' ``actual_from`` against the mean of the other seeds' ``actual_to``, Spearman over subsets,
    averaged over k (one seed's noise never meets itself); with one seed per subset, that seed against itself.

    Args:
        actual_from: ``[M, K, S]`` actual values of the predicting measurement.
        actual_to: ``[M, K, S]`` actual values of the predicted measurement.
    """
    k = actual_from.shape[1]
    if k == 1:
        return LDSResult(spearman_per_column(actual_from[:, 0], actual_to[:, 0]))
    per_seed = []
    for s in range(k):
        others = np.delete(actual_to, s, axis=1).mean(axis=1)
        per_seed.append(spearman_per_column(actual_from[:, s], others))
    return LDSResult(np.nanmean(np.stack(per_seed), axis=0))


def oracle_lds(actual: np.ndarray) -> LDSResult:
    """Exact retraining: seed k's measurements against the mean of the other seeds', averaged over k. ``[M, K, S]``."""
    if actual.shape[1] < 2:
        raise ValueError("the exact-retraining oracle needs at least 2 seeds per subset")
    return retraining_correlation(actual, actual)


def finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def lds_results(
    score_paths: Sequence[str | Path], pairs: Sequence[Mapping[str, str]], masks: np.ndarray,
    actual: Mapping[str, np.ndarray],
) -> tuple[list[dict[str, Any]], list[tuple]]:
    """The LDS of every score file for every (scores, target) pair it serves, at every damping.

    Args:
        score_paths: Score files (``scores/{method}/{query}.h5``).
        pairs: ``{"scores": query, "target": measurement}`` pairs; a file serves those whose ``scores`` is its query.
        masks: ``[M, N]`` subset masks (True = kept, or kept at full weight).
        actual: target -> ``[M, K, S]`` actual values (:func:`actual_by_subset`).

    Returns:
        One entry per (file, pair) — method, family, scores, target, predicts, sign, dampings, lds_mean, lds_se,
        best and default (damping, mean, se), gradient_mc_samples — and the per-sample rows (method, scores,
        target, damping, sample, lds).
    """
    results, rows = [], []
    for path in score_paths:
        art = read_scores(path)
        method, scored = art.attrs["method"], art.attrs["measurement"]
        for pair in pairs:
            if pair["scores"] != scored:
                continue
            target = pair["target"]
            sign = target_sign(art, target)  # e.g. loss scores against the ELBO: -1 (one orientation for all)
            curve = [lds(sign * art["scores"][d], masks, actual[target]) for d in range(len(art["dampings"]))]
            means = [c.mean for c in curve]
            best = int(np.nanargmax(means)) if np.isfinite(means).any() else 0
            default = art.attrs["default_damping"]
            dflt = damping_index(art["dampings"], default) if math.isfinite(default) else None
            results.append({
                "method": method,
                "family": family(method),
                "scores": scored,
                "target": target,
                "predicts": art.attrs["predicts"],
                "sign": sign,
                "dampings": [finite(d) for d in art["dampings"]],  # NaN (undamped methods) -> null
                "lds_mean": [finite(c.mean) for c in curve],
                "lds_se": [finite(c.se) for c in curve],
                "best": {"damping": finite(art["dampings"][best]), "mean": finite(curve[best].mean),
                         "se": finite(curve[best].se)},
                "default": None if dflt is None else {
                    "damping": float(art["dampings"][dflt]), "mean": finite(curve[dflt].mean),
                    "se": finite(curve[dflt].se)},
                "gradient_mc_samples": (art.config.get("gradients") or {}).get("mc_samples"),
            })
            for d, c in zip(art["dampings"], curve, strict=True):
                rows.extend((method, scored, target, float(d), i, c.per_sample[i]) for i in range(len(c.per_sample)))
    return results, rows
