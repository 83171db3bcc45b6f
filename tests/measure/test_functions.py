"""Measurement functions against exact references on tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from diffattr.diffusion import Schedule, sample
from diffattr.diffusion.draws import crn_draws
from diffattr.measure import functions as F
from diffattr.measure import measure_samples

D_SHAPE = (1, 4, 4)


class LinearEps(torch.nn.Module):
    """ε_θ(x, t) = a_t · x: tiny, and its expected loss has a closed form."""

    def __init__(self, T: int, scale: float = 0.5, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = torch.nn.Parameter(scale + 0.1 * torch.randn(T, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.a[t].reshape(-1, *([1] * (x.ndim - 1))) * x


def exact_loss(model: LinearEps, s: Schedule, x0: torch.Tensor) -> torch.Tensor:
    """(1/T) Σ_t E_ε ||ε - a_t(√ᾱ_t x0 + √(1-ᾱ_t) ε)||² in closed form, per sample ``[B]``."""
    ab, a = s.alphas_cumprod, model.a.detach()
    d = x0[0].numel()
    per_t = (a[:, None] * ab.sqrt()[:, None]) ** 2 * x0.flatten(1).pow(2).sum(1)[None] + d * (1 - a[:, None] * (1 - ab).sqrt()[:, None]) ** 2
    return per_t.mean(0)


def test_mc_loss_converges_to_exact_at_rate_one_over_sqrt_n():
    s = Schedule.linear(100)
    model = LinearEps(100)
    x0 = torch.rand(2, *D_SHAPE, dtype=torch.float64) * 2 - 1
    exact = exact_loss(model, s, x0)
    rmse = []
    for n in (50, 200, 800, 3200):
        errs = []
        for rep in range(24):
            draws = [crn_draws(rep, i, n, D_SHAPE, 100) for i in range(2)]
            t = torch.stack([d[0] for d in draws])
            eps = torch.stack([d[1] for d in draws]).double()
            est = F.loss(model, s, x0, t, eps).mean(1).detach()
            errs.append(((est - exact) / exact).pow(2).mean().item())
        rmse.append(math.sqrt(np.mean(errs)))
    ratios = np.array(rmse[:-1]) / np.array(rmse[1:])  # 4x the draws -> half the error
    assert rmse[-1] < 0.05
    assert np.all((ratios > 1.4) & (ratios < 2.9)), (rmse, ratios)


def _posterior_closed_form(s: Schedule, x0, x_t, t):
    """Ho et al. eq. 6-7, written out independently of Schedule.posterior."""
    b, ab = s.betas[t], s.alphas_cumprod[t]
    ab_prev = s.alphas_cumprod[t - 1]
    mean = (ab_prev.sqrt() * b / (1 - ab)) * x0 + ((1 - b).sqrt() * (1 - ab_prev) / (1 - ab)) * x_t
    var = (1 - ab_prev) / (1 - ab) * b
    return mean, var


def test_elbo_kl_terms_match_torch_distributions():
    s = Schedule.linear(1000)
    g = torch.Generator().manual_seed(0)
    x0, x_t, eps_pred = (torch.randn(3, *D_SHAPE, generator=g, dtype=torch.float64) for _ in range(3))
    for step in (1, 2, 50, 500, 999):
        t = torch.full((3,), step)
        ours = F.step_kl(s, x0, x_t, t, eps_pred)
        mq, var = _posterior_closed_form(s, x0, x_t, step)
        # p_θ mean from Ho et al. eq. 11: 1/√α_t (x_t - β_t/√(1-ᾱ_t) ε̂)
        beta, ab = s.betas[step], s.alphas_cumprod[step]
        mp = (x_t - beta / (1 - ab).sqrt() * eps_pred) / (1 - beta).sqrt()
        ref = kl_divergence(Normal(mq, var.sqrt()), Normal(mp, var.sqrt())).flatten(1).sum(1)
        torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-10)
    prior_ref = kl_divergence(
        Normal(s.alphas_cumprod[-1].sqrt() * x0, (1 - s.alphas_cumprod[-1]).sqrt()), Normal(0.0, 1.0)
    ).flatten(1).sum(1)
    torch.testing.assert_close(F.prior_kl(s, x0), prior_ref, rtol=1e-10, atol=1e-12)


def test_decoder_is_a_distribution_over_pixel_levels():
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    mean = torch.full_like(levels, 0.3)
    logp = F.discretized_gaussian_log_likelihood(levels, mean, torch.tensor(math.log(0.05), dtype=torch.float64))
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_trajectory_log_prob_equals_step_by_step_normal_log_densities():
    T = 30
    s = Schedule.linear(T)
    model = LinearEps(T, scale=0.2)
    _, _, traj = sample(model, s, (2, *D_SHAPE), torch.Generator().manual_seed(0), store_trajectory=True, progress=False)
    traj = traj.double()
    ref = Normal(0.0, 1.0).log_prob(traj[:, 0]).flatten(1).sum(1)
    for j in range(T - 1):  # the last (noise-free) step has no density
        t = T - 1 - j
        x = traj[:, j]
        eps_hat = model(x, torch.full((2,), t))
        beta, ab = s.betas[t], s.alphas_cumprod[t]
        mean = (x - beta / (1 - ab).sqrt() * eps_hat) / (1 - beta).sqrt()
        std = ((1 - s.alphas_cumprod[t - 1]) / (1 - ab) * beta).sqrt()
        ref = ref + Normal(mean, std).log_prob(traj[:, j + 1]).flatten(1).sum(1)
    ours = F.trajectory(model, s, traj, chunk=7) * np.prod(D_SHAPE)
    torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-9, atol=1e-9)


def test_measurements_are_differentiable():
    s = Schedule.linear(50)
    model = LinearEps(50)
    x0 = torch.rand(2, *D_SHAPE, dtype=torch.float64)
    t, eps = torch.randint(50, (2, 8)), torch.randn(2, 8, *D_SHAPE, dtype=torch.float64)
    for value in (F.loss(model, s, x0, t, eps).mean(), F.elbo(model, s, x0, t, eps).mean(),
                  F.timestep_loss(model, s, x0, [1, 25], eps).mean()):
        (grad,) = torch.autograd.grad(value, model.a)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_common_random_numbers():
    t1, e1 = crn_draws(7, 3, 16, D_SHAPE, 1000)
    t2, e2 = crn_draws(7, 3, 16, D_SHAPE, 1000)
    assert torch.equal(t1, t2) and torch.equal(e1, e2)
    t3, _ = crn_draws(7, 4, 16, D_SHAPE, 1000)
    assert not torch.equal(t1, t3)
    # model-to-model differences: far less variance with shared draws than with independent ones
    s = Schedule.linear(100)
    a, b = LinearEps(100, seed=0), LinearEps(100, seed=0)
    with torch.no_grad():
        b.a.mul_(1.05)
    x0 = torch.rand(1, *D_SHAPE, dtype=torch.float64)
    crn, indep = [], []
    for rep in range(30):
        t, eps = crn_draws(rep, 0, 64, D_SHAPE, 100)
        t2, eps2 = crn_draws(1000 + rep, 0, 64, D_SHAPE, 100)
        la = F.loss(a, s, x0, t[None], eps[None].double()).mean()
        crn.append((F.loss(b, s, x0, t[None], eps[None].double()).mean() - la).item())
        indep.append((F.loss(b, s, x0, t2[None], eps2[None].double()).mean() - la).item())
    assert np.var(crn) < 0.25 * np.var(indep), (np.var(crn), np.var(indep))


def test_measure_samples_shapes_and_finiteness():
    from diffattr.models import build_unet

    T = 20
    s = Schedule.linear(T)
    model = build_unet("unet_tiny").eval()
    from diffattr.diffusion.ddpm import eps_fn

    x0, _, traj = sample(eps_fn(model), s, (3, 1, 8, 8), torch.Generator().manual_seed(0), store_trajectory=True, progress=False)
    cfg = {"measurements": ["loss", "elbo", "trajectory", "timestep_loss"], "mc_samples": 12,
           "timesteps": [1, 10, 20], "batch_size": 5, "seed": 0}
    out = measure_samples(model, s, x0, cfg, traj, progress=False)
    assert out["loss"].shape == out["elbo"].shape == out["trajectory"].shape == (3,)
    assert out["timestep_loss"].shape == out["timestep_loss_se"].shape == (3, 3)
    assert all(np.isfinite(v).all() for v in out.values())
    again = measure_samples(model, s, x0, {**cfg, "batch_size": 12}, traj, progress=False)
    for k in out:  # batching does not change the draws
        np.testing.assert_allclose(out[k], again[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="1..20"):
        measure_samples(model, s, x0, {**cfg, "timesteps": [21]}, traj, progress=False)


def test_timestep_losses_have_their_own_draws_and_crn_is_an_option():
    """Each timestep loss averages measure.timestep_mc_samples draws of its own stream; with common random numbers
    off, every model id gets independent draws (identical models then differ by estimator noise only)."""
    from diffattr.diffusion.ddpm import eps_fn
    from diffattr.diffusion.draws import model_key, timestep_draws
    from diffattr.models import build_unet

    T = 20
    s = Schedule.linear(T)
    model = build_unet("unet_tiny").eval()
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    cfg = {"measurements": ["loss", "timestep_loss"], "mc_samples": 6, "timestep_mc_samples": 9,
           "timesteps": [1, 10], "batch_size": 4, "seed": 3}
    out = measure_samples(model, s, x0, cfg, progress=False)
    with torch.no_grad():
        eps = timestep_draws(3, 1, 9, (1, 8, 8))[None]
        want = F.timestep_loss(eps_fn(model), s, x0[1:2], [10], eps)[0, 0]
    np.testing.assert_allclose(out["timestep_loss"][1, 1], want.mean().item(), rtol=1e-5)
    np.testing.assert_allclose(out["timestep_loss_se"][1, 1], (want.std() / 3).item(), rtol=1e-4)

    a = measure_samples(model, s, x0, {**cfg, "common_random_numbers": False}, progress=False, model_id="subset0_seed0")
    a2 = measure_samples(model, s, x0, {**cfg, "common_random_numbers": False}, progress=False, model_id="subset0_seed0")
    b = measure_samples(model, s, x0, {**cfg, "common_random_numbers": False}, progress=False, model_id="subset0_seed1")
    crn_b = measure_samples(model, s, x0, cfg, progress=False, model_id="subset0_seed1")
    for name in ("loss", "timestep_loss"):
        np.testing.assert_array_equal(a[name], a2[name])  # still deterministic per model
        assert not np.allclose(a[name], b[name])  # independent draws: the same model measures differently
        np.testing.assert_array_equal(crn_b[name], out[name])  # common random numbers: the model id plays no part
    with torch.no_grad():
        t, e = crn_draws(3, 0, 6, (1, 8, 8), T, model_key("subset0_seed1"))
        want = F.loss(eps_fn(model), s, x0[:1], t[None], e[None])[0]
    np.testing.assert_allclose(b["loss"][0], want.mean().item(), rtol=1e-5)
    with pytest.raises(ValueError, match="common_random_numbers: false needs the model id"):
        measure_samples(model, s, x0, {**cfg, "common_random_numbers": False}, progress=False)


def test_per_timestep_counts_and_antithetic_pairs_are_the_draws_of_the_shared_stream():
    """With a count per timestep, each timestep loss averages the first draws of its sample's shared stream; an
    antithetic timestep averages its first n/2 draws and their negatives, and its standard error is that of the pair
    means. A timestep left i.i.d. is exactly what a run with that count at every timestep gives."""
    from diffattr.diffusion.ddpm import eps_fn
    from diffattr.diffusion.draws import timestep_draws
    from diffattr.models import build_unet

    s = Schedule.linear(20)
    model = build_unet("unet_tiny").eval()
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    cfg = {"measurements": ["timestep_loss"], "mc_samples": 6, "timestep_mc_samples": [4, 6, 3],
           "timestep_antithetic": [1, 10], "timesteps": [1, 10, 15], "batch_size": 5, "seed": 3}
    out = measure_samples(model, s, x0, cfg, progress=False)
    shared = timestep_draws(3, 1, 6, (1, 8, 8))
    with torch.no_grad():
        for k, (step, half) in enumerate(((1, 2), (10, 3))):
            eps = torch.cat([shared[:half], -shared[:half]])[None]
            terms = F.timestep_loss(eps_fn(model), s, x0[1:2], [step], eps)[0, 0]
            pairs = (terms[:half] + terms[half:]) / 2
            np.testing.assert_allclose(out["timestep_loss"][1, k], terms.mean().item(), rtol=1e-5)
            np.testing.assert_allclose(out["timestep_loss_se"][1, k], (pairs.std() / half**0.5).item(), rtol=1e-4)
    iid = measure_samples(model, s, x0, {**cfg, "timestep_mc_samples": 3, "timestep_antithetic": []}, progress=False)
    np.testing.assert_allclose(out["timestep_loss"][:, 2], iid["timestep_loss"][:, 2], rtol=1e-6)
    np.testing.assert_allclose(out["timestep_loss_se"][:, 2], iid["timestep_loss_se"][:, 2], rtol=1e-6)


def test_batches_across_samples_and_timesteps_equal_separate_computation():
    """Loss and ELBO from one forward pass, in batches that span samples (and timestep losses in batches that span
    samples and timesteps), equal each measurement computed on its own, sample by sample, with the same draws."""
    from diffattr.diffusion.ddpm import eps_fn
    from diffattr.diffusion.draws import timestep_draws
    from diffattr.models import build_unet

    T = 20
    s = Schedule.linear(T)
    model = build_unet("unet_tiny").eval()
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    cfg = {"measurements": ["loss", "elbo", "timestep_loss"], "mc_samples": 6, "timestep_mc_samples": 3,
           "timesteps": [1, 5, 20], "batch_size": 5, "seed": 7}  # 5 rows: every batch straddles two pieces
    out = measure_samples(model, s, x0, cfg, progress=False)
    with torch.no_grad():
        for i in range(3):
            t, e = crn_draws(7, i, 6, (1, 8, 8), T)
            for name, fn in (("loss", F.loss), ("elbo", F.elbo)):
                want = fn(eps_fn(model), s, x0[i : i + 1], t[None], e[None])[0]
                np.testing.assert_allclose(out[name][i], want.mean().item(), rtol=1e-5, err_msg=f"{name}, sample {i}")
                np.testing.assert_allclose(out[f"{name}_se"][i], (want.std() / 6**0.5).item(), rtol=1e-4)
            eps = timestep_draws(7, i, 3, (1, 8, 8))[None]
            want = F.timestep_loss(eps_fn(model), s, x0[i : i + 1], [1, 5, 20], eps)[0].mean(-1)
            np.testing.assert_allclose(out["timestep_loss"][i], want.numpy(), rtol=1e-5, err_msg=f"sample {i}")


def test_measurement_precision_and_compile():
    """measure.precision bf16 autocasts the U-Net's forward (the oracles move by bfloat16 rounding, not more) and
    keeps what the LDS reads, the differences between two nearby models, in order; tf32 leaves a CPU run
    unchanged; measure.compile computes the same oracles."""
    from diffattr.models import build_unet

    T = 50
    s = Schedule.linear(T)
    model = build_unet("unet_tiny").eval()
    near = build_unet("unet_tiny").eval()  # a "retrained" model: the same weights, each moved by ~1 %
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p, q in zip(model.parameters(), near.parameters(), strict=True):
            q.copy_(p * (1 + 0.01 * torch.randn(p.shape, generator=g)))
    x0 = torch.rand(12, 1, 8, 8, generator=g) * 2 - 1
    cfg = {"measurements": ["loss", "elbo", "timestep_loss"], "mc_samples": 64, "timestep_mc_samples": 8,
           "timesteps": [1, 25], "batch_size": 256, "seed": 0}
    fp32 = [measure_samples(m, s, x0, cfg, progress=False) for m in (model, near)]
    bf16 = [measure_samples(m, s, x0, {**cfg, "precision": "bf16"}, progress=False) for m in (model, near)]
    for name in ("loss", "elbo", "timestep_loss"):
        assert not np.array_equal(fp32[0][name], bf16[0][name])  # autocast is on
        np.testing.assert_allclose(bf16[0][name], fp32[0][name], rtol=5e-3, err_msg=name)
    diff32, diff16 = fp32[1]["loss"] - fp32[0]["loss"], bf16[1]["loss"] - bf16[0]["loss"]
    assert np.abs(diff32).min() > 0
    from scipy.stats import spearmanr

    assert spearmanr(diff32, diff16).statistic > 0.9, (diff32, diff16)
    tf32 = measure_samples(model, s, x0, {**cfg, "precision": "tf32"}, progress=False)
    for name in fp32[0]:
        np.testing.assert_array_equal(tf32[name], fp32[0][name])
    compiled = measure_samples(model, s, x0, {**cfg, "compile": "aot_eager"}, progress=False)
    for name in fp32[0]:
        np.testing.assert_allclose(compiled[name], fp32[0][name], rtol=1e-5, err_msg=name)


def test_importance_sampled_oracles_weight_each_draw_and_converge_to_the_exact_loss():
    """measure.t_importance_offset: the loss and ELBO oracles average weight x term over t drawn from the proposal
    (the same draws, batched, as computed sample by sample); the weighted loss converges to the closed form."""
    from diffattr.diffusion.ddpm import eps_fn
    from diffattr.diffusion.draws import importance_weights
    from diffattr.models import build_unet

    T = 20
    s = Schedule.linear(T)
    model = build_unet("unet_tiny").eval()
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    cfg = {"measurements": ["loss", "elbo"], "mc_samples": 7, "timesteps": [1], "batch_size": 5, "seed": 2,
           "t_importance_offset": 3.0}
    out = measure_samples(model, s, x0, cfg, progress=False)
    with torch.no_grad():
        for i in range(2):
            t, e = crn_draws(2, i, 7, (1, 8, 8), T, importance_offset=3.0)
            w = importance_weights(t, T, 3.0)
            for name, fn in (("loss", F.loss), ("elbo", F.elbo)):
                want = w * fn(eps_fn(model), s, x0[i : i + 1], t[None], e[None])[0]
                np.testing.assert_allclose(out[name][i], want.mean().item(), rtol=1e-5, err_msg=f"{name}, sample {i}")
                np.testing.assert_allclose(out[f"{name}_se"][i], (want.std() / 7**0.5).item(), rtol=1e-4)
    assert not np.allclose(out["loss"], measure_samples(model, s, x0, {**cfg, "t_importance_offset": None},
                                                        progress=False)["loss"])

    T = 100
    s = Schedule.linear(T)
    lin = LinearEps(T)
    x0 = torch.rand(2, *D_SHAPE, dtype=torch.float64) * 2 - 1
    exact = exact_loss(lin, s, x0)
    errs = []
    for rep in range(8):
        draws = [crn_draws(rep, i, 3200, D_SHAPE, T, importance_offset=5.0) for i in range(2)]
        t = torch.stack([d[0] for d in draws])
        w = importance_weights(t, T, 5.0).double()
        est = (w * F.loss(lin, s, x0, t, torch.stack([d[1] for d in draws]).double())).mean(1).detach()
        errs.append(((est - exact) / exact).pow(2).mean().item())
    assert np.sqrt(np.mean(errs)) < 0.05  # as the uniform estimator at 3200 draws (the test above)
