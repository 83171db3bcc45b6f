"""Influence scores: agreement with retraining on a convex problem, int8 compression, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from curvlinops import KFACLinearOperator
from scipy.stats import pearsonr, spearmanr
from torch import nn

from diffattr.curvature import (
    Approx,
    Fisher,
    FlatEps,
    Variant,
    curvature_from_operator,
    fit_curvature,
    kfac_parameters,
)
from diffattr.diffusion import Schedule
from diffattr.gradients import dequantize_int8, measurement_gradients, quantize_int8, training_gradients
from diffattr.models import build_unet
from diffattr.scores import QueryBank, influence_scores
from diffattr.scores.bank import plan_passes, stream_scores


def test_influence_predicts_retraining_on_ridge_regression():
    """Linear regression with MSE and ridge λ, trained to its optimum: Hessian = GGN + λI exactly."""
    torch.manual_seed(0)
    n, d_in, d_out, lam = 40, 6, 2, 0.05
    X = torch.randn(n, d_in, dtype=torch.float64)
    W_true = torch.randn(d_out, d_in, dtype=torch.float64)
    Y = X @ W_true.T + 0.5 * torch.randn(n, d_out, dtype=torch.float64)
    x_test, y_test = torch.randn(1, d_in, dtype=torch.float64), torch.randn(1, d_out, dtype=torch.float64)

    def optimum(weights: torch.Tensor) -> torch.Tensor:
        # argmin (1/N) Σ w_n ||W x_n - y_n||² + λ/2 ||W||²
        A = 2 / n * (X.T * weights) @ X + lam * torch.eye(d_in, dtype=torch.float64)
        return torch.linalg.solve(A, 2 / n * (X.T * weights) @ Y).T

    model = nn.Sequential(nn.Linear(d_in, d_out, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(optimum(torch.ones(n)))
    params = [p for _, p in kfac_parameters(model)]
    op = KFACLinearOperator(model, nn.MSELoss(reduction="sum"), params, [(X, Y)], fisher_type="type-2",
                            check_deterministic=False, num_data=n)
    curv = curvature_from_operator(op, model, n, Variant(Fisher.MC, Approx.EXPAND), {})

    def grad_of(x, y):
        loss = (model(x) - y).pow(2).sum()
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

    query = grad_of(x_test, y_test)[None]
    train = torch.stack([grad_of(X[j : j + 1], Y[j : j + 1]) for j in range(n)])
    tau = influence_scores(curv, query, train, [lam])[0, 0]
    predicted = tau / n  # scores are N x the predicted change when the example is removed

    m_full = ((x_test @ optimum(torch.ones(n)).T - y_test) ** 2).sum()
    actual = []
    for j in range(n):
        w = torch.ones(n)
        w[j] = 0
        actual.append((((x_test @ optimum(w).T - y_test) ** 2).sum() - m_full).item())
    r = pearsonr(predicted.numpy(), np.array(actual)).statistic
    assert r >= 0.95, r
    # sign convention: positive score = removing the example increases the measurement
    assert np.mean(np.sign(predicted.numpy()) == np.sign(actual)) > 0.9


def _tiny_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = build_unet("unet_tiny").eval()
    images = torch.rand(24, 1, 8, 8) * 2 - 1
    samples = torch.rand(3, 1, 8, 8) * 2 - 1
    return model, images, samples, Schedule.linear()


def _scores(model, images, samples, schedule, compression: str) -> torch.Tensor:
    curv = fit_curvature(model, images, schedule, Variant.from_name("kfac_mc_expand"), 2, 8, seed=0, progress=False)
    wrapper = FlatEps(model)
    q = measurement_gradients(wrapper, samples, "loss", schedule, 8, seed=2)
    train = training_gradients(wrapper, images, torch.arange(len(images)), schedule, 4, seed=1)
    return influence_scores(curv, q, train, [1e-8, 1e-2], compression)


def test_int8_compression_keeps_the_ranking():
    model, images, samples, schedule = _tiny_problem()
    exact = _scores(model, images, samples, schedule, "none")
    comp = _scores(model, images, samples, schedule, "int8")
    for k in range(exact.shape[0]):
        for i in range(exact.shape[1]):
            rho = spearmanr(exact[k, i].numpy(), comp[k, i].numpy()).statistic
            assert rho >= 0.99, (k, i, rho)


def test_repeated_runs_give_identical_scores():
    model, images, samples, schedule = _tiny_problem(1)
    a = _scores(model, images, samples, schedule, "int8")
    b = _scores(model, images, samples, schedule, "int8")
    assert torch.equal(a, b)


def test_query_bank_blocks_and_quantisation():
    rows = torch.randn(2, 3, 50)
    bank = QueryBank("none")
    bank.add(("a", "loss"), rows)
    bank.add(("b", "elbo"), 2 * rows[:1])
    train = torch.randn(4, 50)
    out = bank.split(bank.dot(train))
    torch.testing.assert_close(out[("a", "loss")], rows @ train.T)
    torch.testing.assert_close(out[("b", "elbo")], 2 * rows[:1] @ train.T)
    sizes = [20, 5, 25]
    q, s = quantize_int8(rows[0], sizes)
    assert q.dtype == torch.int8 and s.shape == (3, 3)
    for part in q.split(sizes, dim=1):  # every (row, group) uses its full range
        assert (part.abs().amax(dim=1) == 127).all()
    back = dequantize_int8(q, s, sizes)
    for part, orig, scale in zip(back.split(sizes, 1), rows[0].split(sizes, 1), s.unbind(1), strict=True):
        assert ((part - orig).abs() <= scale[:, None] / 2 + 1e-6).all()
    with pytest.raises(ValueError, match="do not split 50 columns"):
        quantize_int8(rows[0], [20, 20])


def test_int8_keeps_layers_that_a_dominant_layer_would_round_away():
    """Small damping: one layer's near-null directions dominate a preconditioned row by orders of magnitude.

    One scale per row rounds every other layer to zero; one scale per parameter tensor keeps their ranking.
    """
    g = torch.Generator().manual_seed(0)
    sizes = [30, 400, 200]
    row = torch.cat([1e4 * torch.randn(1, 30, generator=g), torch.randn(1, 600, generator=g)], dim=1)
    train = torch.randn(300, 630, generator=g)
    train[:, :30] *= 1e-5  # the training gradients barely touch the dominant directions
    exact = (row @ train.T)[0]
    per_param = (dequantize_int8(*quantize_int8(row, sizes), sizes) @ train.T)[0]
    per_row = (dequantize_int8(*quantize_int8(row)) @ train.T)[0]
    assert spearmanr(exact.numpy(), per_param.numpy()).statistic >= 0.99
    assert spearmanr(exact.numpy(), per_row.numpy()).statistic < 0.9


def test_streamed_scores_equal_one_shot_scores_for_any_block_size():
    torch.manual_seed(0)
    train = torch.randn(10, 40)

    def rows(idx: torch.Tensor) -> torch.Tensor:
        return train[idx]

    for compression in ("none", "int8"):
        bank = QueryBank(compression, [10, 30], chunk_bytes=3 * 40 * 4)  # dequantised 3 rows at a time
        bank.add(("m", "loss"), torch.randn(2, 3, 40))
        want = bank.split(bank.dot(train))[("m", "loss")].numpy()
        for block_bytes in (1, 3 * 40 * 4, 2**30):  # every batch, every second batch, everything at once
            got = stream_scores(bank, rows, 10, 3, progress=False, block_bytes=block_bytes)[("m", "loss")]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_plan_passes_covers_every_query_once_within_the_budget():
    assert plan_passes(3, 5, 100, 10**6) == [[(0, 0, 5), (1, 0, 5), (2, 0, 5)]]  # fits: one pass
    passes = plan_passes(3, 5, 100, 400)  # 4 (query set, sample) pairs per pass
    assert [sum(e - s for _, s, e in p) for p in passes] == [4, 4, 4, 3]
    assert passes[0] == [(0, 0, 4)] and passes[1] == [(0, 4, 5), (1, 0, 3)]
    covered = sorted((k, i) for p in passes for k, s, e in p for i in range(s, e))
    assert covered == [(k, i) for k in range(3) for i in range(5)]
    assert len(plan_passes(2, 3, 10**9, 1)) == 6  # a sample larger than the budget still gets its own pass
