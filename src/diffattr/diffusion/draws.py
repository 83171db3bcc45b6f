"""The Monte-Carlo draws (t, ε[, flip]) of every estimator, the one place they are made.

Every draw set is a deterministic function of a base seed and an index (a generated sample, or a training
example), so the oracles, the measurement gradients, the training gradients and the curvature all see the draws
they should, however the work is batched or sharded:

- :func:`crn_draws`: the (t, ε) draws of one generated sample: the loss/ELBO oracles and the measurement gradients.
  With *common random numbers* (``model_key=None``) every model is measured on identical draws; a model's own
  :func:`model_key` gives it independent ones. t is uniform, or (the oracles' ``measure.t_importance_offset``)
  importance-sampled towards small t, with the weights of :func:`importance_weights`.
- :func:`timestep_draws`: the ε draws of one sample's fixed-timestep losses (own stream, shared by its timesteps);
  :func:`timestep_eps` takes a timestep's own count of them, optionally in antithetic pairs.
- :func:`example_draws`: the (t, ε, flip) draws of training examples: training gradients and K-FAC's data.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from diffattr.diffusion.ddpm import Schedule

#: Independent streams of draws for one (seed, index): the (t, ε) draws of losses, ELBOs and gradients, and the
#: ε draws of the fixed-timestep losses.
MAIN_STREAM, TIMESTEP_STREAM = 0, 1


def crn_generator(seed: int, index: int, stream: int = MAIN_STREAM, model_key: int | None = None) -> torch.Generator:
    """CPU generator for draw set ``index`` (a sample, or a training example) under base ``seed``.

    Args:
        seed: Base seed (a config value).
        index: Sample or training-example index.
        stream: Which independent stream (:data:`MAIN_STREAM`, :data:`TIMESTEP_STREAM`).
        model_key: None for common random numbers across models; a model's key (:func:`model_key`) for draws of
            its own.
    """
    entropy = [seed, index] if model_key is None else [seed, index, model_key]
    state = np.random.SeedSequence(entropy, spawn_key=(stream,) if stream else ()).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def model_key(model_id: str) -> int:
    """A stable integer per model id (seeds its own draws when common random numbers are off)."""
    return zlib.crc32(model_id.encode())


def crn_draws(
    seed: int, index: int, n: int, shape: Sequence[int], num_timesteps: int, model: int | None = None,
    importance_offset: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (t, ε) draws of one sample: ``t`` ``[n]`` on 0..T-1 and ``eps`` ``[n, *shape]``.

    ``t`` is uniform when ``importance_offset`` is None; otherwise it is drawn from :func:`timestep_proposal` (by
    inverting its CDF at uniform numbers of the same generator), and an unbiased estimate of a mean over t weights
    each draw's term by :func:`importance_weights`.
    """
    g = crn_generator(seed, index, MAIN_STREAM, model)
    if importance_offset is None:
        t = torch.randint(num_timesteps, (n,), generator=g)
    else:
        cdf = timestep_proposal(num_timesteps, importance_offset).cumsum(0)
        u = torch.rand(n, generator=g, dtype=torch.float64)
        t = torch.searchsorted(cdf, u, right=True).clamp_(max=num_timesteps - 1)
    eps = torch.randn((n, *shape), generator=g)
    return t, eps


def timestep_proposal(num_timesteps: int, offset: float) -> torch.Tensor:
    """Importance-sampling distribution of t: ``p_t ∝ 1 / (t + offset)`` over the 0-based t = 0..T-1, ``[T]`` float64.

    Almost all of the variance of a model-to-model ELBO difference, and much of a loss difference's, comes from
    the first few percent of timesteps (docs/benchmarks.md, ``bench/oracle_variance.py``); this proposal spends
    the draws there, as Nichol & Dhariwal (2021) importance-sample t for the ELBO. A smaller offset puts more draws
    at the smallest t.
    """
    if offset <= 0:
        raise ValueError(f"importance offset must be > 0, got {offset}")
    p = 1.0 / (torch.arange(num_timesteps, dtype=torch.float64) + offset)
    return p / p.sum()


def importance_weights(t: torch.Tensor, num_timesteps: int, offset: float | None) -> torch.Tensor:
    """Weights ``1 / (T p_t)`` of draws ``t`` from :func:`timestep_proposal` (ones for uniform t, ``offset`` None):
    the mean of ``weight x term`` over the draws is an unbiased estimate of the term's mean over uniform t.
    Float32, shaped as ``t``."""
    if offset is None:
        return torch.ones(t.shape)
    return (1.0 / (num_timesteps * timestep_proposal(num_timesteps, offset)))[t.cpu()].float()


def timestep_draws(seed: int, index: int, n: int, shape: Sequence[int], model: int | None = None) -> torch.Tensor:
    """The ε draws ``[n, *shape]`` of one sample's fixed-timestep losses (shared by all its timesteps)."""
    return torch.randn((n, *shape), generator=crn_generator(seed, index, TIMESTEP_STREAM, model))


def timestep_eps(shared: torch.Tensor, n: int, antithetic: bool = False) -> torch.Tensor:
    """The ε draws ``[n, *shape]`` of one timestep loss, from its sample's :func:`timestep_draws` ``shared``: the
    first ``n``, or (``antithetic``, n even) the first ``n / 2`` followed by their negatives, so that draw ``j`` and
    draw ``j + n / 2`` are a pair ε, -ε.

    Antithetic pairs cancel the part of a loss difference that is odd in ε, which at small t is most of it: on the
    quickstart the spread of a model-to-model difference of the t = 1 loss is 10x smaller for the same number of
    draws (docs/benchmarks.md, ``bench/oracle_variance.py``); at large t it does not help.
    """
    if n > shared.shape[0]:
        raise ValueError(f"{n} draws asked of a stream of {shared.shape[0]}")
    if not antithetic:
        return shared[:n]
    if n % 2:
        raise ValueError(f"antithetic draws come in pairs: {n} is odd")
    half = shared[: n // 2]
    return torch.cat([half, -half])


@dataclass(frozen=True)
class ExampleDraws:
    """The (t, ε, flip) draws of training examples: ``t`` ``[B, n]``, ``eps`` ``[B, n, C, H, W]``, ``flip`` ``[B, n]``."""

    t: torch.Tensor
    eps: torch.Tensor
    flip: torch.Tensor


def example_draws(indices: torch.Tensor, n: int, shape: tuple[int, ...], num_timesteps: int, seed: int) -> ExampleDraws:
    """Deterministic draws for training examples ``indices`` (example ``j`` always gets the same draws for a seed).

    Flips are drawn whether or not augmentation is on, so switching it does not change t and ε.
    """
    ts, epss, flips = [], [], []
    for j in indices.tolist():
        g = crn_generator(seed, int(j))
        ts.append(torch.randint(num_timesteps, (n,), generator=g))
        epss.append(torch.randn((n, *shape), generator=g))
        flips.append(torch.rand(n, generator=g) < 0.5)
    return ExampleDraws(torch.stack(ts), torch.stack(epss), torch.stack(flips))


def noisy(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t for every draw: x0 ``[B, C, H, W]`` (or already ``[B, n, C, H, W]``), t ``[B, n]``,
    eps ``[B, n, C, H, W]`` -> ``[B, n, C, H, W]``."""
    x0_rep = x0.unsqueeze(1).expand_as(eps) if x0.dim() == eps.dim() - 1 else x0
    return schedule.q_sample(x0_rep.flatten(0, 1), t.flatten(), eps.flatten(0, 1)).reshape(eps.shape)


def noisy_inputs(x0: torch.Tensor, draws: ExampleDraws, schedule: Schedule, hflip: bool) -> torch.Tensor:
    """x_t for every draw of every example, ``[B, n, C, H, W]`` (flipped copies of x0 where drawn and enabled)."""
    x = x0.unsqueeze(1).expand_as(draws.eps)
    if hflip:
        x = torch.where(draws.flip.to(x.device)[..., None, None, None], x.flip(-1), x)
    return noisy(schedule, x, draws.t.to(x.device), draws.eps.to(x.device))
