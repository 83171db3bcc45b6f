"""Retraining without the top influences (paper §4, Fig. 3).

For a generated sample and a method, the top fraction p of training examples by score on the sample's loss
(largest τ: the examples whose removal is predicted to increase the loss most) is removed, a model is retrained
with the full model's recipe and seed, and the sample's loss is measured again. The change is compared with
removing a random fraction p.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffattr.config import counterfactual_plan
from diffattr.io import atomic_path, read_h5, write_h5
from diffattr.scores import read_scores, target_sign


def top_fraction_removed(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Kept-mask ``[N]`` that removes exactly the ``ceil(fraction·N)`` highest-scoring examples."""
    n = scores.shape[0]
    k = math.ceil(fraction * n)
    keep = np.ones(n, dtype=bool)
    keep[np.argsort(-scores, kind="stable")[:k]] = False
    return keep


def select_removals(
    config: Mapping[str, Any], lds_json: str | Path, score_paths: Sequence[str | Path], out: str | Path
) -> Path:
    """Write ``counterfactual/removals.h5``: ``masks`` bool ``[n_runs, N]`` (True = kept) with the plan's rows.

    Methods use their best damping on the loss LDS (paper appendix G.3); random removals use ``evaluate`` seed 0.
    """
    plan = counterfactual_plan(config)
    summary = json.loads(Path(lds_json).read_text())
    best = {r["method"]: r["best"]["damping"] for r in summary["results"] if r["scores"] == r["target"] == "loss"}
    by_method = {}
    for p in score_paths:
        art = read_scores(p)
        if art.attrs["measurement"] == "loss":
            by_method[art.attrs["method"]] = art
    n = summary["n_train"]
    rng = np.random.default_rng(0)
    masks, dampings = [], []
    for row in plan:
        if row["method"] == "random":
            keep = np.ones(n, dtype=bool)
            keep[rng.choice(n, math.ceil(row["fraction"] * n), replace=False)] = False
            dampings.append(float("nan"))
        else:
            art = by_method[row["method"]]
            d = int(np.argmin(np.abs(np.log(art["dampings"]) - np.log(best[row["method"]]))))
            keep = top_fraction_removed(target_sign(art, "loss") * art["scores"][d, row["sample"]], row["fraction"])
            dampings.append(float(art["dampings"][d]))
        masks.append(keep)
    return write_h5(
        out,
        {"masks": np.stack(masks), "method": np.asarray([r["method"] for r in plan]),
         "sample": np.asarray([r["sample"] for r in plan], dtype=np.int64),
         "fraction": np.asarray([r["fraction"] for r in plan]), "damping": np.asarray(dampings)},
        config={"evaluate": dict(config["evaluate"])},
    )


def summarize_counterfactual(
    removals_path: str | Path, full_measurement: str | Path, cf_measurements: Sequence[str | Path], out_json: str | Path
) -> dict[str, Any]:
    """Change of the loss on each sample after retraining without each removal set -> ``counterfactual.json``."""
    rem = read_h5(removals_path)
    full = read_h5(full_measurement)["loss"]
    per_run = [read_h5(p)["loss"] for p in cf_measurements]
    rows = []
    fractions = sorted(set(rem["fraction"].tolist()))
    samples = sorted(s for s in set(rem["sample"].tolist()) if s >= 0)
    for r, (method, s, p) in enumerate(zip(rem["method"], rem["sample"], rem["fraction"], strict=True)):
        targets = samples if s < 0 else [int(s)]
        for i in targets:
            rows.append({"method": str(method), "sample": i, "fraction": float(p),
                         "removed": int((~rem["masks"][r]).sum()),
                         "loss_full": float(full[i]), "loss_retrained": float(per_run[r][i]),
                         "change": float(per_run[r][i] - full[i])})
    summary: dict[str, Any] = {"runs": rows, "mean_change": {}}
    for p in fractions:
        for method in sorted({x["method"] for x in rows}):
            ch = [x["change"] for x in rows if x["method"] == method and x["fraction"] == p]
            summary["mean_change"].setdefault(f"{p:g}", {})[method] = {
                "mean": float(np.mean(ch)), "se": float(np.std(ch, ddof=1) / np.sqrt(len(ch))) if len(ch) > 1 else None,
                "n": len(ch)}
    with atomic_path(out_json) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary
