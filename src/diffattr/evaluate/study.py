"""Stage ``compute_lds``: every method × (scores, target) pair × damping, written to ``metrics/lds.json`` and a
per-sample CSV."""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffattr.config import evaluation_pairs
from diffattr.data import read_subsets
from diffattr.evaluate.lds import actual_by_subset, lds, oracle_lds
from diffattr.io import Artefact, atomic_path
from diffattr.measure import read_measurements
from diffattr.scores import read_scores, target_sign

log = logging.getLogger(__name__)


def target_values(meas: Artefact, target: str) -> np.ndarray:
    """Per-model values ``[n_models, S]`` of a target name (``loss``, ``elbo``, ``trajectory``, ``timestep_loss_t<k>``)."""
    if target.startswith("timestep_loss_t"):
        step = int(target.removeprefix("timestep_loss_t"))
        steps = [int(s) for s in meas["timesteps"]]
        if "timestep_loss" not in meas.data or step not in steps:
            raise ValueError(f"target {target!r}: measurements.h5 has timestep losses at {steps if 'timestep_loss' in meas.data else 'none'}")
        return meas["timestep_loss"][:, :, steps.index(step)]
    if target not in meas.data:
        raise ValueError(f"target {target!r} was not measured (measure.measurements); have {sorted(meas.data)}")
    return meas[target]


def family(method: str) -> str:
    """``kfac`` for every (E)K-FAC variant, else the method name."""
    return "kfac" if "kfac" in method else method


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def compute_lds(
    config: Mapping[str, Any],
    measurements_path: str | Path,
    subsets_path: str | Path,
    score_paths: Sequence[str | Path],
    out_json: str | Path,
    out_csv: str | Path,
) -> dict[str, Any]:
    """LDS of every score file for every configured (scores, target) pair that it serves."""
    meas = read_measurements(measurements_path)
    sub = read_subsets(subsets_path)
    masks = sub["masks"]
    M, K = sub["seeds"].shape
    pairs = evaluation_pairs(config)
    targets = sorted({p["target"] for p in pairs})
    actual = {t: actual_by_subset(target_values(meas, t), meas["subset"], meas["seed_index"], M) for t in targets}
    S = next(iter(actual.values())).shape[2]
    oracle = {t: oracle_lds(a) for t, a in actual.items()} if K >= 2 else {}
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
            dflt = int(np.argmin(np.abs(np.log(art["dampings"]) - np.log(default)))) if math.isfinite(default) else None
            results.append({
                "method": method,
                "family": family(method),
                "scores": scored,
                "target": target,
                "predicts": art.attrs["predicts"],
                "sign": sign,
                "dampings": [_finite(d) for d in art["dampings"]],  # NaN (CLIP: undamped) -> null
                "lds_mean": [_finite(c.mean) for c in curve],
                "lds_se": [_finite(c.se) for c in curve],
                "best": {"damping": _finite(art["dampings"][best]), "mean": _finite(curve[best].mean), "se": _finite(curve[best].se)},
                "default": None if dflt is None else {
                    "damping": float(art["dampings"][dflt]), "mean": _finite(curve[dflt].mean), "se": _finite(curve[dflt].se)},
            })
            for d, c in zip(art["dampings"], curve, strict=True):
                rows.extend((method, scored, target, float(d), i, c.per_sample[i]) for i in range(S))
            log.info("LDS %s %s->%s: best %.3f at %.0e", method, scored, target, curve[best].mean, art["dampings"][best])
    summary = {
        "experiment": config["experiment"],
        "n_samples": int(S),
        "n_subsets": int(M),
        "seeds_per_subset": int(K),
        "n_train": int(masks.shape[1]),
        "subset_fraction": float(masks.sum(1).mean() / masks.shape[1]),
        "oracle": {t: {"mean": _finite(o.mean), "se": _finite(o.se)} for t, o in oracle.items()},
        # flat view for `dvc metrics show` (DVC skips lists): method -> "scores->target" -> best / default LDS
        "table": {
            r["method"]: {f"{x['scores']}->{x['target']}": {"best": x["best"]["mean"],
                                                           "default": (x["default"] or {}).get("mean")}
                          for x in results if x["method"] == r["method"]}
            for r in results
        },
        "results": results,
    }
    with atomic_path(out_json) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "scores", "target", "damping", "sample", "lds"])
        w.writerows(rows)
        for t, o in oracle.items():
            w.writerows(("oracle", t, t, "", i, o.per_sample[i]) for i in range(S))
    return summary
