import numpy as np
import pytest

from diffattr.evaluate import actual_by_subset, lds, oracle_lds, predicted_changes


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
