"""Every paper figure of the smoke study: each CSV against the artefacts it is drawn from (not only its existence).

The smoke config switches on every figure (Figs. 6, 7/9, 12, 13/14, 16, 17, 18, 19, 20 besides the main ones).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import pearsonr

from diffattr.config import load_config
from diffattr.data import read_subsets
from diffattr.diffusion import Schedule
from diffattr.evaluate import actual_by_subset, lds, predicted_changes, retraining_correlation, target_values
from diffattr.measure import read_measurements
from diffattr.scores.io import damping_index, read_scores
from tests.conftest import REPO

SMOKE = load_config(REPO / "experiments/smoke.yaml")
M = SMOKE["subsets"]["n_subsets"]
STEPS = SMOKE["measure"]["timesteps"]


def _csv(path: Path) -> list[dict[str, str]]:
    with Image.open(path.with_suffix(".png")) as im:  # and its picture
        assert im.width > 100 and im.height > 100
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(x: str) -> float:
    return float("nan") if x == "" else float(x)


@pytest.fixture(scope="module")
def meas(smoke_study):
    return read_measurements(smoke_study / "measurements/measurements.h5")


@pytest.fixture(scope="module")
def masks(smoke_study):
    return read_subsets(smoke_study / "data/subsets.h5")["masks"]


def test_fig18_elbo_weighting_is_the_schedules(smoke_study):
    rows = _csv(smoke_study / "figures/elbo_weighting.csv")
    w = Schedule.from_config(SMOKE["diffusion"]).elbo_weights().numpy()
    assert len(rows) == SMOKE["diffusion"]["num_timesteps"]
    np.testing.assert_allclose([_num(r["elbo_weight"]) for r in rows][1:], w[1:], rtol=1e-12)


def test_fig17_elbo_pairs_are_the_measured_elbos(smoke_study, meas):
    rows = _csv(smoke_study / "figures/elbo_pairs.csv")
    ids = list(meas["model_id"])
    pairs = sorted({(r["model_a"], r["model_b"]) for r in rows})
    assert ("full", "subset0_seed0") in pairs and ("subset0_seed0", "subset0_seed1") in pairs and len(pairs) == 6
    for a, b in pairs:
        mine = [r for r in rows if (r["model_a"], r["model_b"]) == (a, b)]
        xa, xb = meas["elbo"][ids.index(a)], meas["elbo"][ids.index(b)]
        np.testing.assert_allclose([_num(r["elbo_a"]) for r in mine], xa, rtol=1e-12)
        np.testing.assert_allclose([_num(r["elbo_b"]) for r in mine], xb, rtol=1e-12)
        assert _num(mine[0]["pearson"]) == pytest.approx(pearsonr(xa, xb).statistic, abs=1e-12)


def test_fig12_retraining_matrix_from_the_measurements(smoke_study, meas):
    rows = _csv(smoke_study / "figures/timestep_retraining.csv")
    actual = {t: actual_by_subset(target_values(meas, f"timestep_loss_t{t}"), meas["subset"], meas["seed_index"], M)
              for t in STEPS}
    assert len(rows) == len(STEPS) ** 2
    for r in rows:
        a, b = int(r["from_timestep"]), int(r["target_timestep"])
        want = 100 * retraining_correlation(actual[a], actual[b]).mean
        assert _num(r["correlation"]) == pytest.approx(want, abs=1e-9, nan_ok=True)


def test_fig16_per_timestep_scatter_from_scores_and_measurements(smoke_study, meas, masks):
    rows = _csv(smoke_study / "figures/predicted_vs_actual_timesteps.csv")
    assert {r["measurement"] for r in rows} == {f"timestep_loss_t{t}" for t in STEPS}
    name = f"timestep_loss_t{STEPS[-1]}"
    art = read_scores(smoke_study / f"scores/kfac_mc_expand/{name}.h5")
    pred = predicted_changes(art["scores"][damping_index(art["dampings"], art.attrs["default_damping"])], masks)
    values = target_values(meas, name)
    actual = actual_by_subset(values, meas["subset"], meas["seed_index"], M).mean(1) - values[0][None]
    assert list(meas["model_id"])[0] == "full"
    mine = [r for r in rows if r["measurement"] == name]
    got_pred = np.array([_num(r["predicted"]) for r in mine]).reshape(pred.shape)
    got_actual = np.array([_num(r["actual"]) for r in mine]).reshape(actual.shape)
    np.testing.assert_allclose(got_pred, pred, rtol=1e-6)
    np.testing.assert_allclose(got_actual, actual, rtol=1e-9)


def test_fig19_trajectory_lds_is_the_lds_json(smoke_study):
    summary = json.loads((smoke_study / "metrics/lds.json").read_text())
    rows = _csv(smoke_study / "figures/lds_trajectory.csv")
    want = {(r["method"], r["scores"]): r["best"]["mean"] for r in summary["results"] if r["target"] == "trajectory"}
    assert ("kfac_mc_expand", "loss") in want and ("kfac_mc_expand", "trajectory") in want  # with the m. loss bar
    got = {(r["method"], r["scores"]): _num(r["lds_best"]) for r in rows if r["method"] != "oracle"}
    assert set(got) <= set(want) and ("kfac_mc_expand", "loss") in got
    for key, value in got.items():
        assert value == pytest.approx(want[key] if want[key] is not None else np.nan, nan_ok=True)
    assert not [r for r in _csv(smoke_study / "figures/lds.csv") if r["target"] == "trajectory"]  # Fig. 2 keeps its two


def test_fig20_float16_trak_against_float32(smoke_study):
    summary = json.loads((smoke_study / "metrics/lds.json").read_text())
    rows = _csv(smoke_study / "figures/damping_fp16.csv")
    assert {r["method"] for r in rows} == {"trak", "trak_fp16"}
    fp16 = read_scores(smoke_study / "scores/trak_fp16/loss.h5")
    fp32 = read_scores(smoke_study / "scores/trak/loss.h5")
    assert fp16.config == fp32.config  # the same features and dampings: only the precision differs
    # the smoke model's gradients are small: ΦᵀΦ/N underflows in float16, so float16 TRAK is not TRAK here
    finite = np.isfinite(fp16["scores"])
    rho = [np.corrcoef(fp16["scores"][d][finite[d]], fp32["scores"][d][finite[d]])[0, 1] if finite[d].any() else 0.0
           for d in range(len(fp16["dampings"]))]
    assert min(rho) < 0.99, rho
    entry = {(r["method"], r["scores"], r["target"]): r for r in summary["results"]}
    for r in rows:  # every point, the NaN ones (blank, drawn as ×) included
        e = entry[(r["method"], r["scores"], r["target"])]
        want = e["lds_mean"][e["dampings"].index(_num(r["damping"]))]
        assert _num(r["lds_mean"]) == pytest.approx(np.nan if want is None else want, nan_ok=True)


def test_fig7_damping_per_gradient_mc_count(smoke_study, meas, masks):
    summary = json.loads((smoke_study / "metrics/gradient_mc.json").read_text())
    assert summary["counts"] == [2, 4]
    rows = _csv(smoke_study / "figures/damping_gradient_mc.csv")
    assert {r["method"] for r in rows} == {"kfac_mc_expand_grad2", "kfac_mc_expand_grad4"}
    art = read_scores(smoke_study / "scores/kfac_mc_expand_grad4/loss.h5")
    assert art.config["gradients"]["mc_samples"] == 4
    main = read_scores(smoke_study / "scores/kfac_mc_expand/loss.h5")
    assert main.config["gradients"]["mc_samples"] == 2 and not np.allclose(art["scores"], main["scores"])
    actual = actual_by_subset(meas["loss"], meas["subset"], meas["seed_index"], M)
    for r in rows:
        if (r["method"], r["scores"], r["target"]) == ("kfac_mc_expand_grad4", "loss", "loss"):
            d = damping_index(art["dampings"], _num(r["damping"]))
            assert _num(r["lds_mean"]) == pytest.approx(lds(art["scores"][d], masks, actual).mean, nan_ok=True)


def test_fig6_compression_int8_row_is_the_pipelines_int8(smoke_study, meas, masks):
    rows = {r["scheme"]: r for r in _csv(smoke_study / "figures/compression.csv")}
    assert set(rows) == {"none", "svd_r1", "svd_r4", "int8", "int4"}
    assert _num(rows["none"]["spearman"]) == pytest.approx(1.0) and _num(rows["none"]["ratio"]) == 1.0
    assert _num(rows["int8"]["ratio"]) == pytest.approx(4.0, rel=0.01)
    assert _num(rows["int8"]["spearman"]) >= _num(rows["int4"]["spearman"])
    assert _num(rows["svd_r1"]["ratio"]) > _num(rows["svd_r4"]["ratio"]) > 1
    # the pipeline's scores are int8-compressed at every damping: at the default one, the same LDS as here
    summary = json.loads((smoke_study / "metrics/lds.json").read_text())
    main = next(r for r in summary["results"] if (r["method"], r["scores"], r["target"]) == ("kfac_mc_expand", "loss", "loss"))
    assert _num(rows["int8"]["lds_mean"]) == pytest.approx(main["default"]["mean"], abs=1e-6)


def test_fig13_14_downweighted_fleet(smoke_study, masks):
    info = json.loads((smoke_study / "models/downweight0_seed0/train_info.json").read_text())
    assert info["n_train"] == 40 and info["loss_weight_factor"] == 0.5 and info["steps"] == SMOKE["train"]["steps"]
    dw = read_measurements(smoke_study / "measurements/downweight.h5")
    assert sorted(dw["model_id"]) == [f"downweight{m}_seed0" for m in range(M)]
    actual = {t: actual_by_subset(target_values(dw, f"timestep_loss_t{t}"), dw["subset"], dw["seed_index"], M)
              for t in STEPS}
    rows = _csv(smoke_study / "figures/downweight_timestep_matrix.csv")
    assert len(rows) == len(STEPS) ** 2
    a, b = STEPS[0], STEPS[-1]
    art = read_scores(smoke_study / f"scores/kfac_mc_expand/timestep_loss_t{a}.h5")
    best = max(lds(art["scores"][d], masks, actual[b]).mean for d in range(len(art["dampings"])))
    cell = next(r for r in rows if (int(r["scores_timestep"]), int(r["target_timestep"])) == (a, b))
    assert _num(cell["lds_best"]) == pytest.approx(100 * best, nan_ok=True)
    retraining = _csv(smoke_study / "figures/downweight_retraining.csv")
    cell = next(r for r in retraining if (int(r["from_timestep"]), int(r["target_timestep"])) == (a, b))
    assert _num(cell["correlation"]) == pytest.approx(100 * retraining_correlation(actual[a], actual[b]).mean, nan_ok=True)
