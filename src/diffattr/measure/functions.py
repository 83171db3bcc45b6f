"""Measurement functions m(θ, x) on generated samples (paper §3.3, §4, appendix G.5).

All functions are differentiable in the model parameters (no ``torch.no_grad`` inside): the attribution code
differentiates the very same definitions; :func:`diffattr.measure.oracle.measure_model` wraps them in
``torch.inference_mode`` for the measurement oracles.

Conventions (see :mod:`diffattr.diffusion.ddpm`): time index ``t`` in ``0..T-1`` is the paper's step ``t+1``;
``D`` = C·H·W. Monte-Carlo functions return one term per draw (``[B, n]``); the measurement is their mean.

- ``loss``: ||ε - ε_θ(x_t, t)||² summed over the D dimensions, t uniform, ε ~ N(0, I) (the training loss ℓ).
- ``timestep_loss``: the same at fixed paper steps (a list), the ε draws shared across steps.
- ``elbo``: the DDPM evidence lower bound of Ho et al. (eq. 5) in **nats per dimension** (higher = more likely):
  -(L_T + Σ_{t>1} L_{t-1} + L_0) / D, where L_T = KL(q(x_T|x_0) || N(0, I)) is computed exactly and the sum over
  steps is estimated as T · L_t at a uniform t. The KL terms compare the posterior q(x_{t-1}|x_t, x_0) with
  p_θ(x_{t-1}|x_t), both from :class:`~diffattr.diffusion.Schedule` (same variance β̃_t, so the KL is
  ||μ̃ - μ_θ||² / 2β̃_t). The decoder L_0 = -log p_θ(x_0|x_1) is Ho et al.'s discretised Gaussian over the 256
  pixel levels (mean μ_θ(x_1, 1), variance β̃ of step 2, as in their ``fixed_small`` code), evaluated at the
  sample clipped to [-1, 1].
- ``trajectory``: log p_θ of the stored sampling trajectory, in nats per dimension: log N(x_T; 0, I) plus the
  Gaussian log-densities of the T-1 noisy reverse steps. The last step (to x_0) adds no noise, so it has no
  density and is left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from diffattr.diffusion import Schedule
from diffattr.diffusion.draws import noisy
from diffattr.queries import parse_query

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

MEASUREMENTS = ("loss", "elbo", "trajectory", "timestep_loss")

#: Which way round each quantity points, the one place this is defined: +1 for "higher = worse" (a loss), -1 for
#: "higher = more likely" (a log-probability). Loss and ELBO relate as loss ≈ -ELBO up to per-timestep weights and
#: a constant (paper Fig. 18), so a change predicted for one is a change of the opposite sign for the other.
#: Besides the measurements: ``square_norm`` is D-TRAK's ||ε_θ(x_t, t)||² output, used in place of the loss, and
#: ``similarity`` is CLIP's cosine similarity, whose most similar training images are taken as proponents (removing
#: them is taken to raise the loss), so both point like the loss.
ORIENTATION = {"loss": 1, "timestep_loss": 1, "elbo": -1, "trajectory": -1, "square_norm": 1, "similarity": 1}


def orientation(quantity: str) -> int:
    """+1 if higher ``quantity`` is worse (a loss), -1 if higher is more likely; ``timestep_loss_t<k>`` included.

    Raises:
        ValueError: For a quantity without a declared orientation.
    """
    base = parse_query(quantity).measurement
    if base not in ORIENTATION:
        raise ValueError(f"no orientation declared for {quantity!r}; known: {sorted(ORIENTATION)}")
    return ORIENTATION[base]


def relative_sign(predicted: str, target: str) -> int:
    """Factor that turns a predicted increase of ``predicted`` into a predicted increase of ``target`` (±1).

    Scores made for one quantity and evaluated against another (the paper's "m. loss" substitution, D-TRAK's
    square-norm scores, CLIP similarities) must be multiplied by this before they are compared with ``target``.
    """
    return orientation(predicted) * orientation(target)


def _flat_eps(eps_model: EpsModel, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Evaluate ε_θ on ``x`` ``[B, n, C, H, W]`` at ``t`` ``[B, n]`` in one batch."""
    b, n = x.shape[:2]
    return eps_model(x.flatten(0, 1), t.flatten()).reshape(x.shape)


def loss_from_pred(eps: torch.Tensor, eps_pred: torch.Tensor) -> torch.Tensor:
    """||ε - ε̂||² summed over the last three dims: ``[B, n, C, H, W]`` -> ``[B, n]``."""
    return (eps - eps_pred).pow(2).flatten(2).sum(-1)


def loss(eps_model: EpsModel, schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Diffusion loss terms, ``[B, n]`` (mean over n = the loss measurement).

    Args:
        eps_model: ``(x_t [N, C, H, W], t [N]) -> ε̂``.
        schedule: Noise schedule.
        x0: Samples ``[B, C, H, W]`` in model space.
        t: Time indices ``[B, n]``, uniform on 0..T-1.
        eps: Noise ``[B, n, C, H, W]``.
    """
    return loss_from_pred(eps, _flat_eps(eps_model, noisy(schedule, x0, t, eps), t))


def timestep_loss(
    eps_model: EpsModel, schedule: Schedule, x0: torch.Tensor, steps: Sequence[int], eps: torch.Tensor
) -> torch.Tensor:
    """Per-timestep diffusion loss terms ``[B, n_steps, n]`` at paper steps ``steps`` (1..T), ε ``[B, n, ...]``."""
    b, n = eps.shape[:2]
    out = []
    for step in steps:
        t = torch.full((b, n), step - 1, dtype=torch.long, device=eps.device)
        out.append(loss(eps_model, schedule, x0, t, eps))
    return torch.stack(out, 1)


def prior_kl(schedule: Schedule, x0: torch.Tensor) -> torch.Tensor:
    """KL(q(x_T | x_0) || N(0, I)) summed over dims, ``[B]`` (no parameters involved)."""
    ab = schedule.alphas_cumprod[-1].to(x0.dtype)
    mean_sq = ab * x0.pow(2)
    var = 1 - ab
    return 0.5 * (mean_sq + var - 1 - torch.log(var)).flatten(1).sum(-1)


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Log-probability of the 8-bit bin holding ``x`` (in [-1, 1]) under N(mean, exp(log_scale)²), elementwise.

    Ho et al.'s decoder; the edge bins extend to ±infinity. Uses the exact normal CDF (``torch.special``).
    """
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = torch.special.ndtr(inv_std * (centered + 1.0 / 255))
    cdf_min = torch.special.ndtr(inv_std * (centered - 1.0 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def step_kl(schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, eps_pred: torch.Tensor) -> torch.Tensor:
    """KL(q(x_{t-1}|x_t, x_0) || p_θ(x_{t-1}|x_t)) summed over dims, for t >= 1. Shapes ``[N, ...]`` -> ``[N]``."""
    mean_q, var = schedule.posterior(x0, x_t, t)
    mean_p, _ = schedule.reverse(eps_pred, x_t, t)
    return ((mean_q - mean_p).pow(2) / (2 * var.clamp(min=1e-30))).flatten(1).sum(-1)


def decoder_nll(schedule: Schedule, x0: torch.Tensor, x_1: torch.Tensor, eps_pred: torch.Tensor) -> torch.Tensor:
    """-log p_θ(x_0 | x_1) with the discretised Gaussian decoder, summed over dims, ``[N]``."""
    t0 = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
    mean_p, _ = schedule.reverse(eps_pred, x_1, t0)
    log_scale = 0.5 * torch.log(schedule.posterior_var[1]).to(x0.dtype)
    return -discretized_gaussian_log_likelihood(x0.clamp(-1, 1), mean_p, log_scale).flatten(1).sum(-1)


def elbo_from_pred(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, x_t: torch.Tensor, eps_pred: torch.Tensor) -> torch.Tensor:
    """ELBO estimator terms in nats/dim, ``[B, n]``, from x_t ``[B, n, ...]`` and ε̂ at the draws ``t`` ``[B, n]``."""
    b, n = t.shape
    d = x0[0].numel()
    x0_rep = x0.unsqueeze(1).expand_as(x_t).flatten(0, 1)
    tf, xf, pf = t.flatten(), x_t.flatten(0, 1), eps_pred.flatten(0, 1)
    is_dec = tf == 0
    tk = torch.where(is_dec, torch.ones_like(tf), tf)  # KL is undefined at t=0; masked out below
    step_terms = torch.where(is_dec, decoder_nll(schedule, x0_rep, xf, pf), step_kl(schedule, x0_rep, xf, tk, pf))
    nll = prior_kl(schedule, x0).unsqueeze(1) + schedule.num_timesteps * step_terms.reshape(b, n)
    return -nll / d


def elbo(eps_model: EpsModel, schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """ELBO estimator terms ``[B, n]`` in nats/dim (mean over n = the ELBO measurement). Shapes as :func:`loss`."""
    x_t = noisy(schedule, x0, t, eps)
    return elbo_from_pred(schedule, x0, t, x_t, _flat_eps(eps_model, x_t, t))


def trajectory_steps(
    eps_model: EpsModel, schedule: Schedule, traj: torch.Tensor, steps: slice | None = None
) -> torch.Tensor:
    """Gaussian log-densities (summed over dims) of the noisy reverse steps of stored trajectories.

    Args:
        eps_model: ``(x_t, t) -> ε̂``.
        schedule: Noise schedule.
        traj: ``[B, T + 1, C, H, W]``, ``traj[:, 0] = x_T`` and ``traj[:, j + 1]`` drawn from ``traj[:, j]`` at
            time index ``T - 1 - j``.
        steps: Which transitions ``j`` (of ``0..T-2``, the noisy ones) to evaluate; all by default.

    Returns:
        ``[B, n_steps]`` log p_θ(traj[:, j + 1] | traj[:, j]) in nats.
    """
    T = schedule.num_timesteps
    js = torch.arange(T - 1)[steps if steps is not None else slice(None)]
    b = traj.shape[0]
    x_prev = traj[:, js]  # [B, n, ...]
    x_next = traj[:, js + 1]
    t = (T - 1 - js).to(traj.device).unsqueeze(0).expand(b, -1)
    eps_pred = _flat_eps(eps_model, x_prev, t)
    mean, var = schedule.reverse(eps_pred.flatten(0, 1), x_prev.flatten(0, 1), t.flatten())
    logp = -0.5 * ((x_next.flatten(0, 1) - mean).pow(2) / var + torch.log(2 * math.pi * var))
    return logp.flatten(1).sum(-1).reshape(b, -1)


def trajectory_prior(traj: torch.Tensor) -> torch.Tensor:
    """log N(x_T; 0, I) summed over dims, ``[B]``."""
    x_T = traj[:, 0]
    return (-0.5 * (x_T.pow(2) + math.log(2 * math.pi))).flatten(1).sum(-1)


def trajectory(eps_model: EpsModel, schedule: Schedule, traj: torch.Tensor, chunk: int = 100) -> torch.Tensor:
    """Log-probability of stored trajectories in nats/dim, ``[B]`` (differentiable; evaluated ``chunk`` steps at a time)."""
    T = schedule.num_timesteps
    total = trajectory_prior(traj)
    for start in range(0, T - 1, chunk):
        total = total + trajectory_steps(eps_model, schedule, traj, slice(start, min(start + chunk, T - 1))).sum(1)
    return total / traj[0, 0].numel()
