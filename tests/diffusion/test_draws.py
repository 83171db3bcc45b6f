"""Importance sampling of t for the loss/ELBO oracles: the proposal, its draws and the weights that keep the
estimate unbiased."""

from __future__ import annotations

import pytest
import torch

from diffattr.diffusion.draws import (
    crn_draws,
    importance_weights,
    timestep_draws,
    timestep_eps,
    timestep_proposal,
)


def test_weighted_mean_over_the_proposal_is_exactly_the_uniform_mean():
    """Σ_t p_t · w_t · f(t) = (1/T) Σ_t f(t) for any f: the identity that makes the weighted estimate unbiased."""
    T = 1000
    p = timestep_proposal(T, 20.0)
    assert p.dtype == torch.float64 and p.shape == (T,)
    assert abs(p.sum().item() - 1) < 1e-12 and bool((p[1:] < p[:-1]).all())  # a distribution, decreasing in t
    assert p[0] / p[-1] == pytest.approx((T - 1 + 20) / 20)  # ∝ 1/(t + c)
    w = importance_weights(torch.arange(T), T, 20.0).double()
    f = torch.randn(T, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).exp()
    assert (p * w * f).sum().item() == pytest.approx(f.mean().item(), rel=1e-6)  # w is float32
    assert torch.equal(importance_weights(torch.tensor([3, 7]), T, None), torch.ones(2))


def test_importance_draws_follow_the_proposal_and_stay_deterministic():
    T, c = 10, 1.5
    t, eps = crn_draws(4, 2, 200_000, (1,), T, importance_offset=c)
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= T - 1 and eps.shape == (200_000, 1)
    freq = torch.bincount(t, minlength=T).double() / len(t)
    p = timestep_proposal(T, c)
    assert (freq - p).abs().max().item() < 4 * (p * (1 - p) / len(t)).sqrt().max().item()  # ~4 s.d. of a frequency
    t2, eps2 = crn_draws(4, 2, 200_000, (1,), T, importance_offset=c)
    assert torch.equal(t, t2) and torch.equal(eps, eps2)  # common random numbers: the same draws every time
    uniform, _ = crn_draws(4, 2, 200_000, (1,), T)
    assert torch.bincount(uniform, minlength=T).double().div(len(t)).sub(1 / T).abs().max() < 0.005
    with pytest.raises(ValueError, match="must be > 0"):
        timestep_proposal(T, 0.0)


def test_timestep_eps_takes_a_prefix_or_antithetic_pairs_of_the_shared_stream():
    shared = timestep_draws(0, 4, 8, (1, 2, 2))
    assert torch.equal(timestep_eps(shared, 5), shared[:5])
    pairs = timestep_eps(shared, 6, antithetic=True)
    assert torch.equal(pairs[:3], shared[:3]) and torch.equal(pairs[3:], -shared[:3])
    assert torch.equal(pairs[:3] + pairs[3:], torch.zeros(3, 1, 2, 2))  # each pair sums to zero
    with pytest.raises(ValueError, match="5 is odd"):
        timestep_eps(shared, 5, antithetic=True)
    with pytest.raises(ValueError, match="9 draws asked of a stream of 8"):
        timestep_eps(shared, 9)
