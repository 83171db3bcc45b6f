"""Vectorised per-example gradients against plain per-sample autograd on a tiny U-Net."""

from __future__ import annotations

import pytest
import torch

from diffattr.curvature import FlatEps, kfac_parameters
from diffattr.diffusion import Schedule
from diffattr.diffusion.ddpm import eps_fn
from diffattr.diffusion.draws import crn_draws, example_draws, noisy, noisy_inputs
from diffattr.gradients import measurement_gradients, training_gradients
from diffattr.measure import functions as F
from diffattr.models import build_unet

T = 50


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_unet("unet_tiny").double().eval()
    samples = torch.rand(5, 1, 8, 8, dtype=torch.float64) * 2 - 1
    return FlatEps(model), samples, Schedule.linear(T)


def _reference(wrapper, samples, measure) -> torch.Tensor:
    """∇θ measure(eps_model, i, x0) one sample at a time with torch.autograd."""
    params = [p for _, p in kfac_parameters(wrapper)]
    model = eps_fn(wrapper.unet)
    rows = []
    for i in range(samples.shape[0]):
        m = measure(model, i, samples[i : i + 1])
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(m, params)]))
    return torch.stack(rows)


def _draws(i: int, n: int, like: torch.Tensor):
    t, eps = crn_draws(7, i, n, tuple(like.shape[1:]), T)
    return t[None], eps[None].to(like)


@pytest.mark.parametrize("measurement", ["loss", "elbo", "timestep_loss", "square_norm"])
def test_measurement_gradients_match_per_sample_autograd(setup, measurement):
    wrapper, samples, schedule = setup
    output = "square_norm" if measurement == "square_norm" else "loss"
    name = "loss" if measurement == "square_norm" else measurement

    def measure(model, i, x0):
        t, eps = _draws(i, 6, x0)
        if measurement == "loss":
            return F.loss(model, schedule, x0, t, eps).mean()
        if measurement == "elbo":
            return F.elbo(model, schedule, x0, t, eps).mean()
        if measurement == "timestep_loss":
            return F.timestep_loss(model, schedule, x0, [10], eps).mean()
        return F._flat_eps(model, noisy(schedule, x0, t, eps), t).pow(2).flatten(2).sum(-1).mean()

    got = measurement_gradients(wrapper, samples, name, schedule, 6, seed=7, timestep=10, output=output, batch_size=2)
    want = _reference(wrapper, samples, measure)
    assert got.shape == (5, sum(p.numel() for _, p in kfac_parameters(wrapper)))
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_trajectory_gradients_match_per_sample_autograd(setup):
    wrapper, samples, schedule = setup
    traj = torch.randn(3, T + 1, 1, 8, 8, dtype=torch.float64)
    got = measurement_gradients(wrapper, samples[:3], "trajectory", schedule, 1, seed=0, trajectories=traj)
    want = _reference(wrapper, samples[:3], lambda model, i, x0: F.trajectory(model, schedule, traj[i : i + 1])[0])
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_training_gradients_match_per_example_autograd(setup):
    wrapper, samples, schedule = setup
    idx = torch.tensor([3, 0, 4])
    got = training_gradients(wrapper, samples[idx], idx, schedule, 4, seed=1, hflip=True)
    d = example_draws(idx, 4, (1, 8, 8), T, 1)
    x_t = noisy_inputs(samples[idx], d, schedule, True)
    want = _reference(
        wrapper, x_t, lambda m, i, x: (m(x[0], d.t[i]) - d.eps[i].to(x)).pow(2).flatten(1).sum(1).mean()
    )
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_measurement_gradient_errors(setup):
    wrapper, samples, schedule = setup
    with pytest.raises(ValueError, match="unknown measurement 'nope'"):
        measurement_gradients(wrapper, samples, "nope", schedule, 2, seed=0)
    with pytest.raises(ValueError, match="need a timestep"):
        measurement_gradients(wrapper, samples, "timestep_loss", schedule, 2, seed=0)
    with pytest.raises(ValueError, match="stored trajectories"):
        measurement_gradients(wrapper, samples, "trajectory", schedule, 2, seed=0)
    with pytest.raises(ValueError, match="replaces the loss measurement only"):
        measurement_gradients(wrapper, samples, "elbo", schedule, 2, seed=0, output="square_norm")
