"""Stages of ``rules/evaluate.smk``: LDS of every method, the figures, and the counterfactual retraining check."""

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
from diffattr.data import read_subsets, read_train
from diffattr.evaluate import actual_by_subset, lds, oracle_lds, predicted_changes, target_values
from diffattr.evaluate.counterfactual import removal_masks, summarize
from diffattr.io import atomic_path, read_h5, read_json, write_h5
from diffattr.measure import read_measurements
from diffattr.plots import figures
from diffattr.sampling import read_samples
from diffattr.scores.io import damping_index, read_scores, target_sign
from diffattr.scores.registry import family, label
from diffattr.stages import Paths

log = logging.getLogger(__name__)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def compute_lds(
    input: Paths, output: Paths, *, experiment: str, evaluate: Mapping[str, Any], timesteps: Sequence[int]
) -> None:
    """``metrics/lds.json`` and ``metrics/lds_per_sample.csv``: the LDS of every score file for every configured
    (scores, target) pair it serves, at every damping, with the exact-retraining oracle of each target."""
    meas = read_measurements(input.measurements)
    sub = read_subsets(input.subsets)
    masks = sub["masks"]
    M, K = sub["seeds"].shape
    pairs = evaluation_pairs(evaluate, timesteps)
    targets = sorted({p["target"] for p in pairs})
    actual = {t: actual_by_subset(target_values(meas, t), meas["subset"], meas["seed_index"], M) for t in targets}
    S = next(iter(actual.values())).shape[2]
    oracle = {t: oracle_lds(a) for t, a in actual.items()} if K >= 2 else {}
    results, rows = [], []
    for path in input.scores:
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
                "dampings": [_finite(d) for d in art["dampings"]],  # NaN (undamped methods) -> null
                "lds_mean": [_finite(c.mean) for c in curve],
                "lds_se": [_finite(c.se) for c in curve],
                "best": {"damping": _finite(art["dampings"][best]), "mean": _finite(curve[best].mean),
                         "se": _finite(curve[best].se)},
                "default": None if dflt is None else {
                    "damping": float(art["dampings"][dflt]), "mean": _finite(curve[dflt].mean),
                    "se": _finite(curve[dflt].se)},
            })
            for d, c in zip(art["dampings"], curve, strict=True):
                rows.extend((method, scored, target, float(d), i, c.per_sample[i]) for i in range(S))
            log.info("LDS %s %s->%s: best %.3f at %.0e", method, scored, target, curve[best].mean, art["dampings"][best])
    summary = {
        "experiment": experiment,
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
    with atomic_path(output.lds) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    with atomic_path(output.per_sample) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "scores", "target", "damping", "sample", "lds"])
        w.writerows(rows)
        for t, o in oracle.items():
            w.writerows(("oracle", t, t, "", i, o.per_sample[i]) for i in range(S))


def plot_figures(input: Paths, output: Paths, *, evaluate: Mapping[str, Any]) -> None:
    """Every figure of the study (PNG + the CSV it was drawn from), from its artefacts.

    Outputs: ``lds``, ``damping``, ``hessian``, ``top``, ``scatter``, ``timesteps`` (a list: empty unless
    ``evaluate.timestep_matrix``) and ``data`` (the CSVs, beside the PNGs).
    """
    summary = read_json(input.lds)
    csv_of = {Path(p).stem: p for p in output.data}
    not_timestep = {**summary, "results": [r for r in summary["results"] if "timestep" not in r["target"]]}
    figures.lds_bars(not_timestep, output.lds, csv_of["lds"])
    figures.damping_curves(not_timestep, output.damping, csv_of["damping"])
    figures.hessian_ablation(summary, output.hessian, csv_of["hessian_ablation"])
    art = read_scores(input.kfac_loss)
    method = art.attrs["method"]
    for png in output.timesteps:
        figures.timestep_matrix(summary, method, png, csv_of["timestep_matrix"])

    k = damping_index(art["dampings"], art.attrs["default_damping"])
    scores = target_sign(art, "loss") * art["scores"][k]
    figures.top_influences(
        scores, read_samples(input.samples)["images"], read_train(input.train)["images"], output.top,
        csv_of["top_influences"], k=evaluate["top_k_images"],
        title=f"{label(method)} (λ={art['dampings'][k]:.0e}), loss measurement: generated sample | "
              "most positive | most negative | most neutral training images",
    )
    meas = read_measurements(input.measurements)
    sub = read_subsets(input.subsets)
    values = target_values(meas, "loss")
    actual = actual_by_subset(values, meas["subset"], meas["seed_index"], sub["masks"].shape[0]).mean(1)
    full = values[list(meas["model_id"]).index("full")]
    figures.predicted_vs_actual(
        predicted_changes(scores, sub["masks"]), actual - full[None], output.scatter, csv_of["predicted_vs_actual"],
        title=f"loss on generated samples, {label(method)} λ={art['dampings'][k]:.0e}",
    )


def select_counterfactuals(input: Paths, output: Paths, *, plan: Sequence[Mapping[str, Any]]) -> None:
    """``counterfactual/removals.h5``: ``masks`` bool ``[n_runs, N]`` (True = kept) with the plan's rows
    (:func:`diffattr.scores.registry.counterfactual_plan`: method, sample, fraction) and the damping used."""
    summary = read_json(input.lds)
    best = {r["method"]: r["best"]["damping"] for r in summary["results"] if r["scores"] == r["target"] == "loss"}
    loss_scores = {}
    for p in input.scores:
        art = read_scores(p)
        if art.attrs["measurement"] == "loss":
            loss_scores[art.attrs["method"]] = art
    masks, dampings = removal_masks(plan, loss_scores, best, summary["n_train"])
    write_h5(
        output.removals,
        {"masks": masks, "method": np.asarray([r["method"] for r in plan]),
         "sample": np.asarray([r["sample"] for r in plan], dtype=np.int64),
         "fraction": np.asarray([r["fraction"] for r in plan]), "damping": dampings},
        config={"plan": list(plan)},
    )


def evaluate_counterfactuals(input: Paths, output: Paths) -> None:
    """``metrics/counterfactual.json`` and its figure: the change of each sample's loss after retraining without
    each removal set, against removing a random set of the same size."""
    summary = summarize(read_h5(input.removals), read_h5(input.full)["loss"], [read_h5(p)["loss"] for p in input.runs])
    with atomic_path(output.metrics) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    figures.counterfactual_bars(summary, output.figure, output.data)
