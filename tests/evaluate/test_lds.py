import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from diffattr.evaluate import actual_by_subset, lds, oracle_lds, predicted_changes, spearman_per_column


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n (no ties in these tests)."""
    r = np.empty(len(x))
    r[np.argsort(x)] = np.arange(1, len(x) + 1)
    return r


def spearman_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    return 1 - 6 * np.sum((ra - rb) ** 2) / (n * (n * n - 1))


def test_lds_of_constructed_predictions_is_the_hand_computed_spearman():
    rng = np.random.default_rng(0)
    S, N, M, K = 3, 30, 7, 2
    scores = rng.normal(size=(S, N))
    masks = np.zeros((M, N), dtype=bool)
    for m in range(M):
        masks[m, rng.choice(N, 15, replace=False)] = True
    actual = rng.normal(size=(M, K, S))
    result = lds(scores, masks, actual)
    for i in range(S):
        pred = [scores[i][~masks[m]].sum() / N for m in range(M)]  # removed examples' scores
        assert result.per_sample[i] == pytest.approx(spearman_by_hand(np.array(pred), actual[:, :, i].mean(1)))
    assert result.mean == pytest.approx(np.mean(result.per_sample))
    assert result.se == pytest.approx(np.std(result.per_sample, ddof=1) / np.sqrt(S))


def test_spearman_per_column_equals_scipy_with_ties_constants_and_nans():
    rng = np.random.default_rng(1)
    pred = rng.integers(0, 5, size=(16, 40)).astype(float)  # many ties
    actual = rng.normal(size=(16, 40))
    pred[:, 3] = 2.0  # constant column
    actual[4, 5] = np.nan  # a NaN (TRAK in float16 keeps non-finite scores)
    pred[:, 6] = np.inf
    pred[0, 7] = np.inf
    ours = spearman_per_column(pred, actual)
    for i in range(40):
        if i in (3, 5, 6):
            assert np.isnan(ours[i])
        else:
            assert ours[i] == pytest.approx(spearmanr(pred[:, i], actual[:, i]).statistic, abs=1e-12)


def test_perfect_and_reversed_predictions():
    masks = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1], [0, 1, 0, 1]], dtype=bool)
    scores = np.array([[1.0, 2.0, 4.0, 8.0]])
    pred = predicted_changes(scores, masks)[:, 0]
    np.testing.assert_allclose(pred, [12 / 4, 10 / 4, 3 / 4, 5 / 4])
    actual = np.stack([pred, pred + 0.1], axis=1)[:, :, None]  # [M, K, S]
    assert lds(scores, masks, actual).mean == pytest.approx(1.0)
    assert lds(-scores, masks, actual).mean == pytest.approx(-1.0)


def test_oracle_is_one_seed_against_the_mean_of_the_others():
    rng = np.random.default_rng(1)
    actual = rng.normal(size=(8, 3, 2))
    o = oracle_lds(actual)
    for i in range(2):
        expected = np.mean([spearman_by_hand(actual[:, k, i], np.delete(actual[:, :, i], k, axis=1).mean(1)) for k in range(3)])
        assert o.per_sample[i] == pytest.approx(expected)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        oracle_lds(actual[:, :1])


def test_actual_by_subset_orders_models_and_reports_gaps():
    values = np.arange(5 * 2, dtype=float).reshape(5, 2)  # full + 2 subsets x 2 seeds
    subset, seed_index = np.array([-1, 1, 0, 1, 0]), np.array([-1, 0, 1, 1, 0])
    out = actual_by_subset(values, subset, seed_index, 2)
    np.testing.assert_array_equal(out[0, 0], values[4])
    np.testing.assert_array_equal(out[1, 1], values[3])
    with pytest.raises(ValueError, match="missing"):
        actual_by_subset(values[:4], subset[:4], seed_index[:4], 2)


def _study_files(tmp_path, predicted_loss_change, masks, seeds_per_subset=2):
    """measurements.h5 and subsets.h5 for M subsets x K seeds whose ELBO is an exact negative affine function of
    the loss change predicted by the scores (and whose loss follows the prediction exactly)."""
    from diffattr.io import write_h5

    M, S = predicted_loss_change.shape
    K = seeds_per_subset
    loss = np.concatenate([np.zeros((1, S)), np.repeat(predicted_loss_change, K, axis=0)])  # full model first
    elbo = -(3.0 * loss + 5.0)  # loss ≈ -ELBO up to weights and a constant (paper Fig. 18)
    write_h5(tmp_path / "measurements.h5", {
        "loss": loss, "elbo": elbo, "model_id": np.asarray(["full", *[f"subset{m}_seed{k}" for m in range(M) for k in range(K)]]),
        "subset": np.asarray([-1, *[m for m in range(M) for _ in range(K)]]),
        "seed_index": np.asarray([-1, *[k for _ in range(M) for k in range(K)]]),
        "seed": np.arange(1 + M * K), "timesteps": np.asarray([1])})
    write_h5(tmp_path / "subsets.h5", {"masks": masks, "seeds": np.arange(M * K).reshape(M, K)})


@pytest.mark.parametrize(("method", "predicts"), [("kfac_mc_expand", "loss"), ("dtrak", "square_norm"),
                                                  ("clip", "similarity")])
def test_substituted_measurement_is_oriented(tmp_path, method, predicts):
    """Scores predicting the loss (or a loss-like output) against an ELBO that is an exact negative affine function
    of that loss: LDS = +1 (a sign error gives -1)."""
    from diffattr.config import validate_config
    from diffattr.scores import write_scores
    from diffattr.stages.evaluate import compute_lds
    from tests.conftest import paths

    rng = np.random.default_rng(0)
    S, N, M = 4, 24, 9
    masks = np.zeros((M, N), dtype=bool)
    for m in range(M):
        masks[m, rng.choice(N, N // 2, replace=False)] = True
    scores = rng.normal(size=(S, N))
    _study_files(tmp_path, predicted_changes(scores, masks), masks)
    files = [tmp_path / "loss.h5"]
    write_scores(files[0], scores[None], [1e-8], method, "loss", 1e-8, predicts=predicts)
    if predicts != "loss":  # D-TRAK and CLIP write the same loss-like scores into their ELBO file
        files.append(write_scores(tmp_path / "elbo.h5", scores[None], [1e-8], method, "elbo", 1e-8, predicts=predicts))
    pairs = [{"scores": "loss", "target": "elbo"}, {"scores": "elbo", "target": "elbo"}]
    cfg = validate_config({"experiment": "t", "measure": {"measurements": ["loss", "elbo"], "timesteps": [1]},
                           "influence": {"measurements": ["loss", "elbo"]},
                           "evaluate": {"timestep_matrix": False, "pairs": pairs}})
    compute_lds(paths(measurements=tmp_path / "measurements.h5", subsets=tmp_path / "subsets.h5", scores=files),
                paths(lds=tmp_path / "lds.json", per_sample=tmp_path / "lds.csv"),
                experiment="t", evaluate=cfg["evaluate"], timesteps=cfg["measure"]["timesteps"])
    summary = json.loads((tmp_path / "lds.json").read_text())
    got = {(r["scores"], r["target"]): r for r in summary["results"]}
    assert got[("loss", "elbo")]["best"]["mean"] == pytest.approx(1.0)
    assert got[("loss", "elbo")]["sign"] == -1
    if predicts != "loss":  # the ELBO file of a loss-like method is oriented the same way
        assert got[("elbo", "elbo")]["best"]["mean"] == pytest.approx(1.0)


def test_every_quantity_has_an_orientation():
    from diffattr.measure import MEASUREMENTS, orientation, relative_sign

    assert {orientation(m) for m in MEASUREMENTS} == {1, -1}
    assert orientation("timestep_loss_t50") == orientation("loss") == -orientation("elbo") == -orientation("trajectory")
    assert relative_sign("loss", "elbo") == relative_sign("square_norm", "trajectory") == -1
    assert relative_sign("elbo", "trajectory") == relative_sign("similarity", "timestep_loss_t1") == 1
    with pytest.raises(ValueError, match="no orientation declared for 'lossy'"):
        orientation("lossy")


def test_compute_lds_picks_the_best_and_the_default_damping_and_writes_every_sample(tmp_path):
    """Three dampings: exact scores, reversed scores, noise. The best is the exact one, the default is reported at
    its own damping, the flat ``table`` and the per-sample CSV agree with the results."""
    import csv

    from diffattr.config import validate_config
    from diffattr.scores import write_scores
    from diffattr.stages.evaluate import compute_lds
    from tests.conftest import paths

    rng = np.random.default_rng(1)
    S, N, M = 3, 20, 8
    masks = np.zeros((M, N), dtype=bool)
    for m in range(M):
        masks[m, rng.choice(N, N // 2, replace=False)] = True
    scores = rng.normal(size=(S, N))
    _study_files(tmp_path, predicted_changes(scores, masks), masks)
    stack = np.stack([scores, -scores, rng.normal(size=(S, N))])
    write_scores(tmp_path / "loss.h5", stack, [1e-8, 1e-4, 1.0], "kfac_mc_expand", "loss", 1e-4, predicts="loss")
    cfg = validate_config({"experiment": "t", "evaluate": {"pairs": [{"scores": "loss", "target": "loss"}]}})
    compute_lds(paths(measurements=tmp_path / "measurements.h5", subsets=tmp_path / "subsets.h5",
                      scores=[tmp_path / "loss.h5"]),
                paths(lds=tmp_path / "lds.json", per_sample=tmp_path / "lds.csv"),
                experiment="t", evaluate=cfg["evaluate"], timesteps=[1])
    summary = json.loads((tmp_path / "lds.json").read_text())
    (r,) = summary["results"]
    assert r["lds_mean"][:2] == [pytest.approx(1.0), pytest.approx(-1.0)]
    assert r["best"] == {"damping": 1e-8, "mean": pytest.approx(1.0), "se": pytest.approx(0.0)}
    assert r["default"]["damping"] == 1e-4 and r["default"]["mean"] == pytest.approx(-1.0)
    assert summary["table"]["kfac_mc_expand"]["loss->loss"] == {"best": r["best"]["mean"], "default": r["default"]["mean"]}
    assert summary["oracle"]["loss"]["mean"] == pytest.approx(1.0)  # the seeds agree exactly
    with open(tmp_path / "lds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * S + S  # every damping and sample, then the oracle's samples
    assert [float(x["lds"]) for x in rows if x["damping"] == "0.0001"] == pytest.approx([-1.0] * S)
