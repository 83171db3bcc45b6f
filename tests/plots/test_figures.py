"""Each figure function on a small synthetic ``lds.json``: the CSV beside each PNG holds exactly the numbers drawn."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffattr.plots import figures
from diffattr.scores.registry import family


def _result(method: str, scores: str, target: str, means: list[float | None], dampings: list[float | None]) -> dict:
    best = int(np.nanargmax([np.nan if m is None else m for m in means]))
    return {"method": method, "family": family(method), "scores": scores, "target": target,
            "dampings": dampings, "lds_mean": means, "lds_se": [0.01] * len(means),
            "best": {"damping": dampings[best], "mean": means[best], "se": 0.01},
            "default": {"damping": dampings[0], "mean": means[0], "se": 0.01} if dampings[0] else None}


@pytest.fixture
def summary() -> dict:
    d = [1e-8, 1e-4, 1.0]
    results = [
        _result("ekfac_empirical_reduce", "loss", "loss", [0.30, 0.25, 0.10], d),  # first K-FAC variant configured
        _result("kfac_mc_reduce", "loss", "loss", [0.28, 0.20, 0.05], d),
        _result("trak", "loss", "loss", [0.12, 0.15, 0.02], d),
        _result("clip", "loss", "loss", [0.05], [None]),
        _result("ekfac_empirical_reduce", "loss", "elbo", [0.20, 0.22, 0.08], d),
        _result("ekfac_empirical_reduce", "elbo", "elbo", [0.18, 0.10, 0.04], d),
    ]
    for a in (1, 500):
        for b in (1, 500):
            results.append(_result("ekfac_empirical_reduce", f"timestep_loss_t{a}", f"timestep_loss_t{b}",
                                   [0.5 if a == b else 0.1], [1e-8]))
    return {"experiment": "synthetic", "n_samples": 4, "n_subsets": 8, "seeds_per_subset": 2,
            "oracle": {"loss": {"mean": 0.6, "se": 0.02}, "elbo": {"mean": 0.5, "se": 0.02}}, "results": results}


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _png_ok(path: Path) -> None:
    with Image.open(path) as im:
        assert im.width > 100 and im.height > 100


def test_lds_bars_keep_the_first_kfac_variant_when_kfac_mc_expand_is_absent(summary, tmp_path):
    not_timestep = {**summary, "results": [r for r in summary["results"] if "timestep" not in r["target"]]}
    figures.lds_bars(not_timestep, tmp_path / "lds.png", tmp_path / "lds.csv")
    _png_ok(tmp_path / "lds.png")
    rows = _csv(tmp_path / "lds.csv")
    loss = {r["method"]: r for r in rows if r["target"] == "loss"}
    # the first variant is shown (the old display-name filter dropped every variant but kfac_mc_expand);
    # the other variants belong to the Hessian ablation figure
    assert set(loss) == {"ekfac_empirical_reduce", "trak", "clip", "oracle"}
    assert float(loss["ekfac_empirical_reduce"]["lds_best"]) == 0.30
    assert float(loss["ekfac_empirical_reduce"]["best_damping"]) == 1e-8
    assert float(loss["trak"]["lds_best"]) == 0.15 and float(loss["oracle"]["lds_best"]) == 0.6
    elbo = [(r["method"], r["scores"], float(r["lds_best"])) for r in rows if r["target"] == "elbo"]
    assert sorted(elbo) == [("ekfac_empirical_reduce", "elbo", 0.18), ("ekfac_empirical_reduce", "loss", 0.22),
                            ("oracle", "elbo", 0.5)]


def test_damping_curves_write_every_point_and_skip_undamped_methods(summary, tmp_path):
    figures.damping_curves({**summary, "results": summary["results"][:6]}, tmp_path / "d.png", tmp_path / "d.csv")
    _png_ok(tmp_path / "d.png")
    rows = _csv(tmp_path / "d.csv")
    assert len(rows) == 5 * 3  # five damped curves of three points; CLIP is a line, not a curve
    trak = [(float(r["damping"]), float(r["lds_mean"])) for r in rows if r["method"] == "trak"]
    assert trak == [(1e-8, 0.12), (1e-4, 0.15), (1.0, 0.02)]


def test_hessian_ablation_lists_every_kfac_variant_on_the_loss(summary, tmp_path):
    figures.hessian_ablation(summary, tmp_path / "h.png", tmp_path / "h.csv")
    _png_ok(tmp_path / "h.png")
    rows = {r["method"]: float(r["lds_best"]) for r in _csv(tmp_path / "h.csv")}
    assert rows == {"ekfac_empirical_reduce": 0.30, "kfac_mc_reduce": 0.28}


def test_timestep_matrix_places_each_pair(summary, tmp_path):
    figures.timestep_matrix(summary, "ekfac_empirical_reduce", tmp_path / "t.png", tmp_path / "t.csv")
    _png_ok(tmp_path / "t.png")
    grid = {(int(r["scores_timestep"]), int(r["target_timestep"])): float(r["lds_best"]) for r in _csv(tmp_path / "t.csv")}
    assert grid == {(1, 1): 50.0, (1, 500): 10.0, (500, 1): 10.0, (500, 500): 50.0}


def test_top_influences_pick_the_extremes(tmp_path):
    scores = np.array([[0.5, -2.0, 3.0, 0.01, -0.2]])
    images = np.zeros((5, 1, 8, 8), dtype=np.uint8)
    figures.top_influences(scores, images[:1], images, tmp_path / "top.png", tmp_path / "top.csv", k=2)
    _png_ok(tmp_path / "top.png")
    picked = {(r["kind"], int(r["rank"])): int(r["train_index"]) for r in _csv(tmp_path / "top.csv")}
    assert picked == {("positive", 0): 2, ("positive", 1): 0, ("negative", 0): 1, ("negative", 1): 4,
                      ("neutral", 0): 3, ("neutral", 1): 4}


def test_predicted_vs_actual_writes_one_row_per_panel_subset_and_sample(tmp_path):
    predicted, actual = np.arange(6.0).reshape(3, 2), -np.arange(6.0).reshape(3, 2)
    figures.predicted_vs_actual({"loss": (predicted, actual), "timestep_loss_t1": (actual, predicted)},
                                tmp_path / "s.png", tmp_path / "s.csv")
    _png_ok(tmp_path / "s.png")
    rows = _csv(tmp_path / "s.csv")
    got = [(r["measurement"], int(r["subset"]), int(r["sample"]), float(r["predicted"]), float(r["actual"])) for r in rows]
    assert got == [("loss", m, s, float(2 * m + s), -float(2 * m + s)) for m in range(3) for s in range(2)] + \
        [("timestep_loss_t1", m, s, -float(2 * m + s), float(2 * m + s)) for m in range(3) for s in range(2)]


def test_counterfactual_bars_per_fraction_and_method(tmp_path):
    summary = {"mean_change": {"0.1": {"random": {"mean": 0.01, "se": 0.005, "n": 4},
                                       "kfac_mc_expand": {"mean": 0.3, "se": None, "n": 1}}}}
    figures.counterfactual_bars(summary, tmp_path / "c.png", tmp_path / "c.csv")
    rows = {r["method"]: (float(r["mean_change"]), float(r["se"])) for r in _csv(tmp_path / "c.csv")}
    assert rows == {"kfac_mc_expand": (0.3, 0.0), "random": (0.01, 0.005)}
    assert not math.isnan(rows["random"][0])
