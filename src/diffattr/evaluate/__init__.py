"""Evaluation of attribution scores: LDS (and the exact-retraining oracle), counterfactual retraining."""

from diffattr.evaluate.lds import (
    LDSResult,
    actual_by_subset,
    finite,
    lds,
    lds_results,
    oracle_lds,
    predicted_changes,
    retraining_correlation,
    spearman_per_column,
    target_values,
)

__all__ = [
    "LDSResult",
    "actual_by_subset",
    "finite",
    "lds",
    "lds_results",
    "oracle_lds",
    "predicted_changes",
    "retraining_correlation",
    "spearman_per_column",
    "target_values",
]
