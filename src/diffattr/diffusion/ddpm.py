"""DDPM (Ho et al., 2020) in code.

Time indices follow diffusers: ``t`` in ``0..T-1``, where index ``t`` is the paper's step ``t + 1``
(so ``x_t`` at index 0 is one noising step away from the data ``x_0``). Images live in ``[-1, 1]``.

The schedule constants come from diffusers' ``DDPMScheduler`` (linear betas, ``fixed_small`` variance). By default
the sampler does not clip the predicted ``x_0``, so that it is exactly the Gaussian reverse process whose likelihood
the measurements evaluate; ``sample.clip_x0`` turns on Ho et al.'s clipping for sampling only (the measurements
always evaluate the unclipped p_θ). :meth:`Schedule.posterior` and :meth:`Schedule.reverse` are the one place that
defines the per-step Gaussians; sampling, the ELBO and the trajectory log-probability all use them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from diffusers import DDPMScheduler

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def eps_fn(model: torch.nn.Module) -> EpsModel:
    """Wrap a diffusers ``UNet2DModel`` as ``(x_t [B, C, H, W], t [B]) -> eps [B, C, H, W]``."""
    return lambda x, t: model(x, t).sample


@dataclass
class Schedule:
    """Linear-beta DDPM schedule.

    Attributes:
        betas: ``[T]`` float64.
        alphas_cumprod: ``[T]`` float64, ᾱ_t = prod_{s<=t} (1 - β_s).
        scheduler: the diffusers scheduler the constants come from.
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    scheduler: DDPMScheduler

    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
        """The schedule of Ho et al. (linear betas from ``beta_start`` to ``beta_end`` over T steps)."""
        # imported here, not at the top: importing diffusers takes about 4 s, which every CPU-only job that imports
        # this module for its types (LDS, counterfactual selection, figures) would pay without building a schedule
        from diffusers import DDPMScheduler

        sched = DDPMScheduler(
            num_train_timesteps=num_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule="linear",
            variance_type="fixed_small",
            clip_sample=False,
            prediction_type="epsilon",
        )
        # Same linear schedule as the scheduler's, in float64: diffusers keeps betas in float32, which shifts
        # e.g. beta_1 = 1e-4 by 2.5e-13 and the prior/KL terms of the ELBO by more than their MC error at T.
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        return cls(betas=betas, alphas_cumprod=torch.cumprod(1.0 - betas, 0), scheduler=sched)

    @classmethod
    def from_config(cls, diffusion_cfg: dict) -> Schedule:
        """From the ``diffusion`` config section."""
        return cls.linear(diffusion_cfg["num_timesteps"], diffusion_cfg["beta_start"], diffusion_cfg["beta_end"])

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def __post_init__(self) -> None:
        # Per-step coefficients in float64 (1 - alpha_bar cancels badly in float32 at small t).
        ab = self.alphas_cumprod
        ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
        self.posterior_var = (1 - ab_prev) / (1 - ab) * self.betas  # beta-tilde; 0 at t = 0
        self.posterior_coef_x0 = ab_prev.sqrt() * self.betas / (1 - ab)
        self.posterior_coef_xt = (1 - self.betas).sqrt() * (1 - ab_prev) / (1 - ab)

    def _at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        v = values.to(device=t.device)[t].to(like.dtype)
        return v.reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε. Shapes ``[B, ...]``, ``t`` ``[B]``."""
        return self._at(self.alphas_cumprod.sqrt(), t, x0) * x0 + self._at((1 - self.alphas_cumprod).sqrt(), t, x0) * eps

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)."""
        ab = self.alphas_cumprod
        return self._at(ab.rsqrt(), t, x_t) * x_t - self._at(((1 - ab) / ab).sqrt(), t, x_t) * eps

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(x_{t-1} | x_t, x_0) = N(mean, var I).

        Returns:
            ``mean`` ``[B, ...]`` and ``var`` ``[B, 1, ...]`` (β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t) β_t; 0 at t=0).
        """
        mean = self._at(self.posterior_coef_x0, t, x_t) * x0 + self._at(self.posterior_coef_xt, t, x_t) * x_t
        return mean, self._at(self.posterior_var, t, x_t)

    def reverse(
        self, eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip_x0: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """p_θ(x_{t-1} | x_t) = N(mean, var I) with the ``fixed_small`` variance β̃_t, given ε_θ(x_t, t).

        ``clip_x0``: clip the predicted x̂_0 to the data range [-1, 1] first (Ho et al.'s sampler, ``clip_denoised``).
        """
        x0 = self.predict_x0(x_t, t, eps)
        return self.posterior(x0.clamp(-1.0, 1.0) if clip_x0 else x0, x_t, t)

    def elbo_weights(self) -> torch.Tensor:
        """Weight of ||ε - ε_θ(x_t, t)||² in the ELBO's step term L_{t-1} (paper Fig. 18), ``[T]`` float64.

        With the ``fixed_small`` variance, KL(q(x_{t-1}|x_t, x_0) || p_θ(x_{t-1}|x_t)) =
        β_t² / (2 β̃_t (1 - β_t)(1 - ᾱ_t)) · ||ε - ε_θ||² for t ≥ 1 (index; paper step t+1 ≥ 2), where the training
        loss weighs every step by 1. Index 0 is the decoder term, a discretised likelihood rather than a squared
        error: NaN.
        """
        w = self.betas**2 / (2 * self.posterior_var * (1 - self.betas) * (1 - self.alphas_cumprod))
        w[0] = float("nan")
        return w


def ddpm_loss(
    eps_model: EpsModel,
    schedule: Schedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    reduce: bool = True,
) -> torch.Tensor:
    """ε-prediction loss ||ε - ε_θ(x_t, t)||² (summed over pixels), differentiable in θ.

    Args:
        eps_model: ``(x_t, t) -> eps``.
        schedule: Noise schedule.
        x0: Clean images ``[B, C, H, W]`` in [-1, 1].
        t: Time indices ``[B]``.
        eps: Noise ``[B, C, H, W]``.
        reduce: Mean over the batch if True, else per-example ``[B]``.
    """
    pred = eps_model(schedule.q_sample(x0, t, eps), t)
    per = (eps - pred).pow(2).flatten(1).sum(1)
    return per.mean() if reduce else per


@torch.no_grad()
def sample(
    eps_model: EpsModel,
    schedule: Schedule,
    shape: tuple[int, ...],
    generator: torch.Generator,
    device: str | torch.device = "cpu",
    store_trajectory: bool = False,
    progress: bool = True,
    clip_x0: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """DDPM ancestral sampling with the full T steps and ``fixed_small`` variance.

    All randomness (x_T and the per-step noise) is drawn on the CPU from ``generator``, so a seed gives the same
    samples on any device.

    Args:
        eps_model: ``(x_t, t) -> eps``.
        schedule: Noise schedule.
        shape: ``(B, C, H, W)``.
        generator: CPU ``torch.Generator``.
        device: Where the model runs.
        store_trajectory: Also return every state.
        progress: Show a progress bar.
        clip_x0: Clip the predicted x̂_0 to [-1, 1] at every step, as Ho et al.'s code does (``clip_denoised``)
            and diffusers' ``DDPMScheduler`` by default. Without it the sampler is exactly p_θ, but the samples of
            an undertrained model drift far out of the data range (section ``sample`` of the config schema).

    Returns:
        ``x_0`` ``[B, C, H, W]``, ``x_T`` ``[B, C, H, W]`` and, if requested, the trajectory ``[B, T + 1, C, H, W]`` with
        ``trajectory[:, 0] = x_T`` and ``trajectory[:, T] = x_0``.
    """
    T = schedule.num_timesteps
    x_T = torch.randn(shape, generator=generator)
    x = x_T.to(device)
    traj = [x_T] if store_trajectory else None
    for step in tqdm(range(T - 1, -1, -1), desc="sampling", disable=not progress, mininterval=2):
        t = torch.full((shape[0],), step, device=device, dtype=torch.long)
        mean, var = schedule.reverse(eps_model(x, t), x, t, clip_x0)
        # drawn on the host (the same samples on every device), copied without waiting for the device's queue
        noise = torch.randn(shape, generator=generator).to(device, non_blocking=True)
        x = mean + var.sqrt() * noise if step > 0 else mean
        if traj is not None:
            traj.append(x.cpu())
    return x, x_T, (torch.stack(traj, 1) if traj is not None else None)
