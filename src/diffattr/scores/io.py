"""The one score format every method writes: ``scores/{method}/{measurement}.h5``.

Sign and scale (the single place this is defined): for training example j and generated sample x,

    score τ_j = ∇m(θ*, x)ᵀ (G + λI)⁻¹ ∇ℓ(θ*, x_j)  ≈  N · (m(θ_{-j}) - m(θ*)),

i.e. a **positive score means removing x_j is predicted to increase the measurement m**, and scores are N times
the predicted change (N = training-set size). G approximates the Hessian of the training loss averaged over the
data set and λ is stated on that scale (paper appendix G.4). Baselines write similarity-like scores in the same
layout (CLIP: cosine similarity, no damping axis of its own: one row).

Orientation: every file names in its ``predicts`` attribute the quantity whose *increase* a positive score predicts
(the measurement itself for K-FAC and TRAK, ``square_norm`` for D-TRAK, ``similarity`` for CLIP). Whatever
compares scores with measured changes of a target multiplies them by :func:`target_sign` first, which reads the
orientations declared in :data:`diffattr.measure.functions.ORIENTATION` (e.g. loss scores against the ELBO: -1).

TRAK / D-TRAK damping: traker's projectors return Pᵀg without the 1/√k factor, and TRAK's own code adds λ·I to the
unnormalised sum Σ_j φ_j φ_jᵀ of those features. Ours divides the features by √k (inner products preserved in
expectation) and adds λ to the *mean* Φᵀ Φ / N, the scale of K-FAC's damping. A damping λ_trak of TRAK's code
therefore corresponds to λ = λ_trak / (k · N) here (k = ``trak.projection_dim``, N = training-set size). The
paper's TRAK damping figures (Figs. 8, 10) report λ_trak / N (appendix D), so their values map to λ_paper / k.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffattr.io import Artefact, read_h5, write_h5
from diffattr.measure.functions import orientation, relative_sign


def write_scores(
    path: str | Path,
    scores: np.ndarray,
    dampings: Sequence[float],
    method: str,
    measurement: str,
    default_damping: float | None,
    predicts: str,
    config: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``scores`` float32 ``[n_damping, n_query, n_train]`` with ``dampings`` ``[n_damping]``.

    ``predicts`` is the quantity whose increase a positive score predicts (see the module docstring).
    """
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 3 or scores.shape[0] != len(dampings):
        raise ValueError(f"scores must be [n_damping={len(dampings)}, n_query, n_train], got {scores.shape}")
    orientation(predicts)  # fails early for a quantity without a declared orientation
    all_attrs = {"method": method, "measurement": measurement, "predicts": predicts,
                 "default_damping": float("nan") if default_damping is None else float(default_damping),
                 **dict(attrs or {})}
    return write_h5(path, {"scores": scores, "dampings": np.asarray(dampings, dtype=np.float64)},
                    config=config, attrs=all_attrs)


def read_scores(path: str | Path) -> Artefact:
    """Read a score file with shape checks."""
    art = read_h5(path, expect={"scores": (None, None, None), "dampings": (None,)})
    if art["scores"].shape[0] != art["dampings"].shape[0]:
        raise ValueError(f"{path}: scores and dampings disagree in length")
    if "predicts" not in art.attrs:
        raise ValueError(f"{path}: no 'predicts' attribute (written before scores declared their orientation); "
                         "delete it and rerun (or snakemake --forcerun the rule that wrote it)")
    return art


def damping_index(dampings: Sequence[float] | np.ndarray, value: float) -> int:
    """Index of the damping nearest to ``value`` on a log scale (the one rule for "the damping closest to λ").

    A file with a single row (an undamped method: damping NaN) has index 0 for any value.
    """
    d = np.asarray(dampings, dtype=np.float64)
    if d.shape[0] == 1:
        return 0
    if value is None or not np.isfinite(value) or value <= 0:
        raise ValueError(f"no damping near {value!r} among {d.tolist()}")
    return int(np.argmin(np.abs(np.log(d) - np.log(value))))


def target_sign(scores: Artefact, target: str) -> int:
    """±1 that orients a score file's scores as predicted increases of ``target`` (e.g. loss scores, ELBO: -1)."""
    return relative_sign(scores.attrs["predicts"], target)
