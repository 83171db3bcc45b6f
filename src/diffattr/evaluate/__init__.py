"""Evaluation of attribution scores: LDS (and the exact-retraining oracle), counterfactual retraining."""

from diffattr.evaluate.lds import (
    LDSResult,
    actual_by_subset,
    lds,
    oracle_lds,
    predicted_changes,
    spearman_per_column,
    target_values,
)

__all__ = [
    "LDSResult",
    "actual_by_subset",
    "lds",
    "oracle_lds",
    "predicted_changes",
    "spearman_per_column",
    "target_values",
]
