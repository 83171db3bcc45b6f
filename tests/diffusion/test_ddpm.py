import numpy as np
import pytest
import torch

from diffattr.diffusion import Schedule, ddpm_loss, sample
from diffattr.diffusion.ddpm import eps_fn
from diffattr.models import build_unet


def test_schedule_constants_closed_form():
    s = Schedule.linear(1000, 1e-4, 0.02)
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(s.betas.numpy(), betas, rtol=1e-6)
    assert s.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4, rel=1e-12)  # paper t = 1
    assert s.alphas_cumprod[-1].item() == pytest.approx(np.prod(1 - betas), rel=1e-5)  # paper t = T
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.04e-5, rel=1e-2)  # ~ N(0, I) at T


def test_posterior_and_reverse_match_diffusers_step():
    # Run diffusers' DDPMScheduler.step in float64 so the comparison is exact up to float64 rounding.
    torch.manual_seed(0)
    s = Schedule.linear()
    ref = s.scheduler
    ref.betas, ref.alphas, ref.alphas_cumprod = s.betas, 1 - s.betas, s.alphas_cumprod
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    x_t, eps = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randn(4, 1, 8, 8, dtype=torch.float64)
    for step in [999, 500, 10, 1, 0]:
        t = torch.full((4,), step)
        mean, var = s.reverse(eps, x_t, t)
        out = ref.step(eps, step, x_t, generator=torch.Generator().manual_seed(3)).prev_sample
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        ours = mean + var.sqrt() * noise if step > 0 else mean
        torch.testing.assert_close(ours, out, rtol=1e-10, atol=1e-10)


def test_posterior_variance_closed_form():
    s = Schedule.linear()
    t = torch.tensor([0, 1, 999])
    _, var = s.posterior(torch.zeros(3, 1, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64), t)
    ab = s.alphas_cumprod
    expected = [0.0, (1 - ab[0]) / (1 - ab[1]) * s.betas[1], (1 - ab[998]) / (1 - ab[999]) * s.betas[999]]
    torch.testing.assert_close(var.squeeze(1), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_loss_is_differentiable_and_per_example():
    model = build_unet("unet_tiny")
    s = Schedule.linear()
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    t, eps = torch.tensor([0, 10, 999]), torch.randn(3, 1, 8, 8)
    per = ddpm_loss(eps_fn(model), s, x0, t, eps, reduce=False)
    assert per.shape == (3,)
    per.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_sampling_deterministic_and_trajectory_endpoints():
    s = Schedule.linear(50)
    model = build_unet("unet_tiny").eval()
    a, xT, traj = sample(eps_fn(model), s, (2, 1, 8, 8), torch.Generator().manual_seed(0), store_trajectory=True, progress=False)
    b, _, _ = sample(eps_fn(model), s, (2, 1, 8, 8), torch.Generator().manual_seed(0), progress=False)
    c, _, _ = sample(eps_fn(model), s, (2, 1, 8, 8), torch.Generator().manual_seed(1), progress=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    assert traj.shape == (2, 51, 1, 8, 8)
    torch.testing.assert_close(traj[:, 0], xT, rtol=0, atol=0)
    torch.testing.assert_close(traj[:, -1], a, rtol=0, atol=0)


def test_clipped_reverse_matches_diffusers_clip_sample_step():
    """sample.clip_x0: Ho et al.'s clipping, as diffusers' DDPMScheduler(clip_sample=True) steps (float64, exact)."""
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    s = Schedule.linear()
    ref = DDPMScheduler.from_config(s.scheduler.config, clip_sample=True, clip_sample_range=1.0)
    ref.betas, ref.alphas, ref.alphas_cumprod = s.betas, 1 - s.betas, s.alphas_cumprod
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    x_t, eps = 3 * torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randn(4, 1, 8, 8, dtype=torch.float64)
    for step in [999, 500, 10, 1, 0]:
        t = torch.full((4,), step)
        mean, var = s.reverse(eps, x_t, t, clip_x0=True)
        out = ref.step(eps, step, x_t, generator=torch.Generator().manual_seed(3)).prev_sample
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        torch.testing.assert_close(mean + var.sqrt() * noise if step > 0 else mean, out, rtol=1e-10, atol=1e-10)
        assert not torch.allclose(mean, s.reverse(eps, x_t, t)[0])  # the clipping is active on these inputs


def test_clipped_sampling_stays_in_the_data_range_where_unclipped_drifts():
    s = Schedule.linear(100)
    bad = lambda x, t: -0.5 * x  # noqa: E731 (a badly wrong noise prediction)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    free, _, _ = sample(bad, s, (4, 1, 8, 8), gen(), progress=False)
    clipped, _, _ = sample(bad, s, (4, 1, 8, 8), gen(), progress=False, clip_x0=True)
    assert free.abs().max() > 10
    assert clipped.abs().max() <= 1.0  # the last step's mean is the clipped x̂_0 itself
