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
from diffattr.queries import Query
from diffattr.scores import QueryBank, influence_scores
from diffattr.scores.bank import Diagonal, plan_passes, stream_scores
from diffattr.scores.base import GradientArgs, GradientInputs
from diffattr.scores.influence import EIGEN_GROUP, KFACPreconditioner, score_kfac


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
    out = bank.scores(train)
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
        bank = QueryBank(compression, [10, 30], chunk_bytes=3 * 40 * 4, min_chunk_rows=1)  # 3 rows at a time
        bank.add(("m", "loss"), torch.randn(2, 3, 40))
        want = bank.scores(train)[("m", "loss")].numpy()
        for block_bytes in (1, 3 * 40 * 4, 2**30):  # every batch, every second batch, everything at once
            got = stream_scores(bank, rows, 10, 3, progress=False, block_bytes=block_bytes)[("m", "loss")]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_diagonal_blocks_score_each_damping_from_one_row_per_query():
    """A block stored once in a rotated basis gives exactly Qᵀq / (e + λ) · Qᵀg for every λ; blocks of one basis
    share one rotation of the training rows per scoring call, and chunking does not change the result."""
    g = torch.Generator().manual_seed(0)
    P, dampings = 40, [1e-3, 1e-1, 1.0]
    bases = {}
    for name in ("a", "b"):
        Q, _ = torch.linalg.qr(torch.randn(P, P, generator=g, dtype=torch.float64))
        bases[name] = (Q, torch.rand(P, generator=g, dtype=torch.float64))
    calls = {"a": 0, "b": 0}

    def rotation(name):
        def rotate(x):
            calls[name] += 1
            return (x.double() @ bases[name][0]).float()
        return rotate

    queries = {("a", "loss"): torch.randn(3, P, generator=g), ("a", "elbo"): torch.randn(2, P, generator=g),
               ("b", "loss"): torch.randn(3, P, generator=g)}
    train = torch.randn(5, P, generator=g)
    bank = QueryBank("none", chunk_bytes=2 * P * 4, min_chunk_rows=1)  # 2 rows at a time: chunks inside a block
    whole = QueryBank("none", chunk_bytes=1)  # min_chunk_rows (16) rows at a time: every block in one chunk
    for key, q in queries.items():
        Q, e = bases[key[0]]
        for b in (bank, whole):
            b.add(key, (q.double() @ Q).float()[None], Diagonal(key[0], rotation(key[0]), e, dampings))
        bank.add(("per_damping",) + key, torch.stack([q.double() @ Q @ torch.diag(1 / (e + lam)) @ Q.T
                                                      for lam in dampings]))
    assert bank.n_rows == 8 + 8 * len(dampings)
    out = bank.scores(train)
    assert calls == {"a": 1, "b": 1}
    for key, value in whole.scores(train).items():
        torch.testing.assert_close(value, out[key], rtol=1e-5, atol=1e-6)
    for key, q in queries.items():
        Q, e = bases[key[0]]
        want = torch.stack([q.double() @ Q @ torch.diag(1 / (e + lam)) @ Q.T @ train.double().T for lam in dampings])
        assert out[key].shape == (len(dampings), q.shape[0], 5)
        torch.testing.assert_close(out[key].double(), want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out[key], out[("per_damping",) + key], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="one row per query"):
        bank.add(("c",), torch.randn(2, 1, P), Diagonal("a", rotation("a"), bases["a"][1], dampings))


def test_eigenbasis_bank_gives_the_per_damping_scores_with_a_bank_per_damping_smaller():
    """K-FAC through the scoring seam, two variants and per-variant queries: the eigenbasis bank (one row per query)
    equals the per-damping bank without compression and keeps its ranking with int8; both against float64."""
    model, images, samples, schedule = _tiny_problem(2)
    curvs = [fit_curvature(model, images, schedule, Variant.from_name(v), 2, 8, seed=0, progress=False)
             for v in ("kfac_mc_expand", "kfac_empirical_reduce")]
    inputs = GradientInputs(FlatEps(model).eval(), schedule, images, samples, None)
    queries = {"kfac_mc_expand": [Query("loss"), Query("elbo")], "kfac_empirical_reduce": [Query("loss")]}
    dampings = [1e-8, 1e-4, 1e-2]
    exact = {}
    for c in curvs:
        train = torch.cat([inputs.training_gradients(torch.arange(s, s + 8), GradientArgs(4, 8, 0, False, "none"))
                           for s in range(0, 24, 8)])
        for q in queries[c.variant.name]:
            qg = inputs.query_gradients(q, 0, 3, GradientArgs(4, 8, 0, False, "none"))
            exact[(c.variant.name, q.name)] = torch.stack(
                [r @ train.double().T for r in c.precondition(qg.double(), dampings)])
    for compression in ("none", "int8"):
        args = GradientArgs(4, 8, 0, False, compression)
        got = {}
        for bank in ("per_damping", "eigenbasis"):
            files, timings = score_kfac(curvs, inputs, queries, args, dampings, 1e-8, progress=False, query_bank=bank)
            got[bank] = {(f.method, f.query): f.scores for f in files}
            assert {f.args.query_bank for f in files} == {bank} and timings["passes"] == 1
        for key, want in exact.items():
            for bank in got:
                scores = got[bank][key]
                assert scores.shape == (3, 3, 24)
                for d in range(3):
                    ref, val = want[d].numpy(), scores[d]
                    if compression == "none":
                        np.testing.assert_allclose(val, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
                    for i in range(3):
                        assert spearmanr(ref[i], val[i]).statistic >= 0.995, (bank, key, d, i)
    with pytest.raises(ValueError, match="influence.query_bank must be one of"):
        score_kfac(curvs, inputs, queries, args, dampings, 1e-8, progress=False, query_bank="eigen")

    # the eigenbasis rows: each parameter tensor's coordinates in decreasing eigenvalue order, int8 groups of at
    # most EIGEN_GROUP inside a tensor, so that one scale covers coordinates every 1 / (e + λ) rescales alike
    pre = KFACPreconditioner(curvs[0], dampings, bank="eigenbasis")
    sizes = curvs[0].sizes
    assert sum(pre.group_sizes) == sum(sizes) and max(pre.group_sizes) == EIGEN_GROUP
    assert len(pre.group_sizes) == sum(-(-n // EIGEN_GROUP) for n in sizes)
    for part in pre.diagonal.eigenvalues.split(sizes):
        assert (part[1:] <= part[:-1]).all()
    assert torch.equal(pre.diagonal.eigenvalues.sort().values, curvs[0].eigenvalues().sort().values)
    g = torch.randn(2, sum(sizes), dtype=torch.float64)
    torch.testing.assert_close(pre.rotate(g).double().sort(dim=1).values,
                               curvs[0].rotate(g).sort(dim=1).values, rtol=1e-6, atol=1e-7)


def test_plan_passes_covers_every_query_once_within_the_budget():
    assert plan_passes(3, 5, 100, 10**6) == [[(0, 0, 5), (1, 0, 5), (2, 0, 5)]]  # fits: one pass
    passes = plan_passes(3, 5, 100, 400)  # 4 (query set, sample) pairs per pass
    assert [sum(e - s for _, s, e in p) for p in passes] == [4, 4, 4, 3]
    assert passes[0] == [(0, 0, 4)] and passes[1] == [(0, 4, 5), (1, 0, 3)]
    covered = sorted((k, i) for p in passes for k, s, e in p for i in range(s, e))
    assert covered == [(k, i) for k in range(3) for i in range(5)]
    assert len(plan_passes(2, 3, 10**9, 1)) == 6  # a sample larger than the budget still gets its own pass
