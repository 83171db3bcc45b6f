"""Retraining without the top influences (paper §4, Fig. 3).

For a generated sample and a method, the top fraction p of training examples by score on the sample's loss
(largest τ: the examples whose removal is predicted to increase the loss most) is removed, a model is retrained
with the full model's recipe and seed, and the sample's loss is measured again. The change is compared with
removing a random fraction p.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import sem

from diffattr.io import Artefact
from diffattr.scores.io import damping_index, target_sign


def top_fraction_removed(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Kept-mask ``[N]`` that removes exactly the ``ceil(fraction·N)`` highest-scoring examples."""
    n = scores.shape[0]
    k = math.ceil(fraction * n)
    keep = np.ones(n, dtype=bool)
    keep[np.argsort(-scores, kind="stable")[:k]] = False
    return keep


def removal_masks(
    plan: Sequence[Mapping[str, Any]], loss_scores: Mapping[str, Artefact], best_damping: Mapping[str, float], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Kept-masks ``[n_runs, N]`` (True = kept) of the plan's rows and the damping each method used.

    Methods use the damping of their best loss LDS (paper appendix G.3), their scores oriented as predicted increases
    of the loss; random removals draw from seed 0.

    Args:
        plan: :func:`diffattr.scores.registry.counterfactual_plan` rows.
        loss_scores: Each method's score file for the loss measurement.
        best_damping: Each method's best damping on the loss LDS.
        n: Training-set size.
    """
    rng = np.random.default_rng(0)
    masks, dampings = [], []
    for row in plan:
        if row["method"] == "random":
            keep = np.ones(n, dtype=bool)
            keep[rng.choice(n, math.ceil(row["fraction"] * n), replace=False)] = False
            dampings.append(float("nan"))
        else:
            art = loss_scores[row["method"]]
            d = damping_index(art["dampings"], best_damping[row["method"]])
            keep = top_fraction_removed(target_sign(art, "loss") * art["scores"][d, row["sample"]], row["fraction"])
            dampings.append(float(art["dampings"][d]))
        masks.append(keep)
    return np.stack(masks), np.asarray(dampings)


def run_targets(removals: Artefact, n_samples: int) -> list[list[int]]:
    """The samples on which each run of ``removals.h5`` is evaluated (and so measured): a method's run on the
    sample it was retrained for; a random run on every such sample, or on all ``n_samples`` when there are none
    (only random runs, ``evaluate.counterfactual_samples: 0``)."""
    chosen = sorted({int(s) for s in removals["sample"].tolist() if s >= 0}) or list(range(n_samples))
    return [chosen if s < 0 else [int(s)] for s in removals["sample"].tolist()]


def summarize(removals: Artefact, full_loss: np.ndarray, run_losses: Sequence[np.ndarray]) -> dict[str, Any]:
    """Change of the loss on each sample after retraining without each removal set (``counterfactual.json``).

    Args:
        removals: ``removals.h5`` (masks, method, sample, fraction per run).
        full_loss: The full model's loss on every sample ``[S]``.
        run_losses: Each retrained model's loss ``[S]``, in run order (read on its :func:`run_targets` only).
    """
    rem, full = removals, full_loss
    rows = []
    fractions = sorted(set(rem["fraction"].tolist()))
    for r, (method, targets, p) in enumerate(zip(rem["method"], run_targets(rem, len(full)), rem["fraction"],
                                                  strict=True)):
        for i in targets:
            rows.append({"method": str(method), "sample": i, "fraction": float(p),
                         "removed": int((~rem["masks"][r]).sum()),
                         "loss_full": float(full[i]), "loss_retrained": float(run_losses[r][i]),
                         "change": float(run_losses[r][i] - full[i])})
    summary: dict[str, Any] = {"runs": rows, "mean_change": {}}
    for p in fractions:
        for method in sorted({x["method"] for x in rows}):
            ch = [x["change"] for x in rows if x["method"] == method and x["fraction"] == p]
            summary["mean_change"].setdefault(f"{p:g}", {})[method] = {
                "mean": float(np.mean(ch)), "se": float(sem(ch)) if len(ch) > 1 else None, "n": len(ch)}
    return summary
