"""Counterfactual selection: the plan, the removal sets (oriented, best damping) and the summary."""

from __future__ import annotations

import numpy as np
import pytest

from diffattr.config import validate_config
from diffattr.evaluate.counterfactual import (
    removal_masks,
    run_targets,
    summarize,
    top_fraction_removed,
)
from diffattr.io import read_h5
from diffattr.scores import write_scores
from diffattr.scores.registry import counterfactual_plan


def test_plan_has_random_rows_then_every_counterfactual_method_per_sample():
    cfg = validate_config({"experiment": "t", "influence": {"variants": [{"fisher": "empirical", "approx": "reduce"}]},
                           "evaluate": {"methods": ["kfac", "trak", "graddot", "clip"], "counterfactual_samples": 2,
                                        "counterfactual_fractions": [0.1, 0.2]}, "sample": {"n_samples": 5}})
    plan = counterfactual_plan(cfg)
    assert plan[:2] == [{"method": "random", "sample": -1, "fraction": 0.1},
                        {"method": "random", "sample": -1, "fraction": 0.2}]
    # the first K-FAC variant and TRAK; graddot and CLIP are not retrained against
    assert [(r["method"], r["sample"]) for r in plan[2::2]] == [("kfac_empirical_reduce", 0), ("trak", 0),
                                                               ("kfac_empirical_reduce", 1), ("trak", 1)]


def test_top_fraction_removes_exactly_the_highest_scores():
    keep = top_fraction_removed(np.array([0.1, 5.0, -1.0, 3.0, 0.0]), 0.3)  # ceil(1.5) = 2 removed
    assert keep.tolist() == [True, False, True, False, True]


@pytest.mark.parametrize("predicts", ["loss", "elbo"])
def test_removals_use_the_best_damping_and_the_loss_orientation(tmp_path, predicts):
    scores = np.zeros((2, 1, 6), dtype=np.float32)
    scores[0, 0] = [0, 0, 0, 0, 9, 8]  # damping 1e-8
    scores[1, 0] = [9, 8, 0, 0, 0, 0]  # damping 1e-2
    art = read_h5(write_scores(tmp_path / "s.h5", scores, [1e-8, 1e-2], "m", "loss", 1e-8, predicts=predicts))
    plan = [{"method": "random", "sample": -1, "fraction": 0.3}, {"method": "m", "sample": 0, "fraction": 0.3}]
    masks, dampings = removal_masks(plan, {"m": art}, {"m": 1e-2}, 6)
    assert (~masks[0]).sum() == 2 and np.isnan(dampings[0]) and dampings[1] == 1e-2
    # scores that predict the ELBO point the other way for the loss: their lowest scores are removed
    removed = np.flatnonzero(~masks[1]).tolist()
    assert removed == ([0, 1] if predicts == "loss" else [2, 3])


def test_summary_changes_and_standard_errors(tmp_path):
    """A random removal is compared on every sample a method was retrained for; s.e. over those samples."""
    from diffattr.io import write_h5

    rem = read_h5(write_h5(tmp_path / "r.h5", {
        "masks": np.array([[True, False, True], [False, True, True], [True, True, False]]),
        "method": np.array(["random", "m", "m"]), "sample": np.array([-1, 0, 1]), "fraction": np.array([0.3] * 3),
        "damping": np.array([np.nan, 1e-8, 1e-8])}))
    full = np.array([1.0, 2.0])
    runs = [np.array([1.5, 2.1]), np.array([1.25, 9.0]), np.array([9.0, 2.3])]
    summary = summarize(rem, full, runs)
    got = [(r["method"], r["sample"], round(r["change"], 6), r["removed"]) for r in summary["runs"]]
    assert got == [("random", 0, 0.5, 1), ("random", 1, 0.1, 1), ("m", 0, 0.25, 1), ("m", 1, 0.3, 1)]
    random = summary["mean_change"]["0.3"]["random"]
    assert random["mean"] == pytest.approx(0.3) and random["se"] == pytest.approx(0.2) and random["n"] == 2
    assert summary["mean_change"]["0.3"]["m"]["mean"] == pytest.approx(0.275)
    # each run is read only on its targets (what measure_counterfactuals measures; NaN elsewhere)
    assert run_targets(rem, 2) == [[0, 1], [0], [1]]
    runs[1][1], runs[2][0] = np.nan, np.nan
    assert summarize(rem, full, runs) == summary


def test_random_removals_alone_are_compared_on_every_sample(tmp_path):
    """evaluate.counterfactual_samples: 0 leaves only random runs: they are measured on every sample, and the figure
    draws them (it divided by the number of methods, zero, before)."""
    from diffattr.io import write_h5
    from diffattr.plots.figures import counterfactual_bars

    rem = read_h5(write_h5(tmp_path / "r.h5", {
        "masks": np.array([[True, False, True]]), "method": np.array(["random"]), "sample": np.array([-1]),
        "fraction": np.array([0.3]), "damping": np.array([np.nan])}))
    assert run_targets(rem, 3) == [[0, 1, 2]]
    summary = summarize(rem, np.array([1.0, 2.0, 3.0]), [np.array([1.5, 2.0, 3.1])])
    assert [(r["sample"], round(r["change"], 6)) for r in summary["runs"]] == [(0, 0.5), (1, 0.0), (2, 0.1)]
    assert summary["mean_change"]["0.3"]["random"]["mean"] == pytest.approx(0.2)
    counterfactual_bars(summary, tmp_path / "c.png", tmp_path / "c.csv")
    assert (tmp_path / "c.png").stat().st_size > 0
