"""Stages of ``rules/evaluate.smk``: LDS of every method, the figures, and the counterfactual retraining check."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffattr.config import evaluation_pairs
from diffattr.data import read_subsets, read_train
from diffattr.diffusion import Schedule
from diffattr.evaluate import (
    actual_by_subset,
    finite,
    lds_results,
    oracle_lds,
    predicted_changes,
    retraining_correlation,
    target_values,
)
from diffattr.evaluate.counterfactual import removal_masks, summarize
from diffattr.io import atomic_path, read_h5, read_json, write_h5
from diffattr.measure import read_measurements
from diffattr.plots import figures, measurements
from diffattr.queries import TIMESTEP_LOSS, query_names
from diffattr.sampling import read_samples
from diffattr.scores.io import damping_index, read_scores, target_sign
from diffattr.scores.registry import label
from diffattr.stages import Paths

log = logging.getLogger(__name__)


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
    results, rows = lds_results(input.scores, pairs, masks, actual)
    for r in results:
        log.info("LDS %s %s->%s: best %s at %s", r["method"], r["scores"], r["target"], r["best"]["mean"],
                 r["best"]["damping"])
    summary = {
        "experiment": experiment,
        "n_samples": int(S),
        "n_subsets": int(M),
        "seeds_per_subset": int(K),
        "n_train": int(masks.shape[1]),
        "subset_fraction": float(masks.sum(1).mean() / masks.shape[1]),
        "oracle": {t: {"mean": finite(o.mean), "se": finite(o.se)} for t, o in oracle.items()},
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
    """Every attribution figure of the study (PNG + the CSV it was drawn from), from its artefacts.

    Outputs: ``lds``, ``damping``, ``hessian``, ``top``, ``scatter``, the lists ``timesteps`` (Fig. 11) and
    ``timestep_scatter`` (Fig. 16) (empty unless ``evaluate.timestep_matrix``), ``trajectory`` (Fig. 19; empty
    unless a pair targets the trajectory), ``fp16`` (Fig. 20; empty unless ``trak_fp16`` is evaluated), and
    ``data`` (the CSVs, beside the PNGs). Inputs ``kfac_loss`` and ``kfac_timesteps``: the first K-FAC variant's loss and timestep-loss scores.
    """
    summary = read_json(input.lds)
    csv_of = {Path(p).stem: p for p in output.data}

    def only(keep: Callable[[Mapping[str, Any]], bool]) -> dict[str, Any]:
        return {**summary, "results": [r for r in summary["results"] if keep(r)]}

    # Fig. 2: loss and ELBO targets (Fig. 19: the trajectory; Fig. 11: the timestep losses)
    fig2 = only(lambda r: "timestep" not in r["target"] and r["target"] != "trajectory")
    figures.lds_bars(fig2, output.lds, csv_of["lds"])
    figures.damping_curves(fig2, output.damping, csv_of["damping"])
    for png in output.trajectory:
        figures.lds_bars(only(lambda r: r["target"] == "trajectory"), png, csv_of["lds_trajectory"])
    for png in output.fp16:  # Fig. 20: TRAK in float16 next to float32
        figures.damping_curves(only(lambda r: r["method"] in ("trak", "trak_fp16") and r["target"] in ("loss", "elbo")),
                               png, csv_of["damping_fp16"])
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
    masks = read_subsets(input.subsets)["masks"]
    full_row = list(meas["model_id"]).index("full")

    def changes(a: Any, target: str) -> tuple[np.ndarray, np.ndarray]:
        """Predicted (scores ``a`` at their default damping) and actual change of ``target`` per (subset, sample),
        ``[M, S]`` each."""
        d = damping_index(a["dampings"], a.attrs["default_damping"])
        values = target_values(meas, target)
        actual = actual_by_subset(values, meas["subset"], meas["seed_index"], masks.shape[0]).mean(1)
        return predicted_changes(target_sign(a, target) * a["scores"][d], masks), actual - values[full_row][None]

    lam = f"{label(method)} λ={art['dampings'][k]:.0e}"
    figures.predicted_vs_actual({"loss": changes(art, "loss")}, output.scatter,
                                csv_of["predicted_vs_actual"], title=f"loss on generated samples, {lam}")
    for png in output.timestep_scatter:
        arts = [read_scores(p) for p in input.kfac_timesteps]
        panels = {a.attrs["measurement"]: changes(a, a.attrs["measurement"]) for a in arts}
        figures.predicted_vs_actual(panels, png, csv_of["predicted_vs_actual_timesteps"],
                                    title=f"per-timestep losses on generated samples, {lam}")


def plot_measurement_figures(
    input: Paths, output: Paths, *, timesteps: Sequence[int], diffusion: Mapping[str, Any]
) -> None:
    """The figures of the measurements alone (PNG + CSV): the ELBO's timestep weighting (Fig. 18, ``weighting``),
    the lists ``elbo_pairs`` (Fig. 17; empty unless the ELBO is measured) and ``retraining`` (Fig. 12; empty
    unless ``evaluate.timestep_matrix``), and ``data`` (the CSVs)."""
    csv_of = {Path(p).stem: p for p in output.data}
    measurements.elbo_weighting(Schedule.from_config(diffusion).elbo_weights().numpy(), output.weighting,
                                csv_of["elbo_weighting"])
    meas = read_measurements(input.measurements)
    ids = [str(m) for m in meas["model_id"]]
    for png in output.elbo_pairs:
        # the full model and the first three retrained ones: two seeds of one subset, and another subset
        shown = ["full", *[m for m in ids if m.startswith("subset")][:3]]
        measurements.elbo_pairs(meas["elbo"][[ids.index(m) for m in shown]], shown, png, csv_of["elbo_pairs"])
    for png in output.retraining:
        M = read_subsets(input.subsets)["masks"].shape[0]
        names = query_names([TIMESTEP_LOSS], timesteps)
        actual = [actual_by_subset(target_values(meas, n), meas["subset"], meas["seed_index"], M) for n in names]
        grid = np.array([[100 * retraining_correlation(a, b).mean for b in actual] for a in actual])
        measurements.retraining_matrix(grid, list(timesteps), png, csv_of["timestep_retraining"],
                                       title="Retrained models: rank correlation (%) of actual timestep-loss changes")


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
    each removal set (``runs``: ``measurements/counterfactual.h5``), against removing a random set of the same
    size."""
    summary = summarize(read_h5(input.removals), read_h5(input.full)["loss"], list(read_h5(input.runs)["loss"]))
    with atomic_path(output.metrics) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    figures.counterfactual_bars(summary, output.figure, output.data)
