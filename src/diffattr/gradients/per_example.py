"""Per-example gradients, vectorised with ``torch.func`` and deterministic given the seeds.

- Training gradients: ∇_θ ℓ(θ, x_j) with ℓ the diffusion loss averaged over ``mc_samples`` (t, ε[, flip]) draws
  per example (``output="loss"``), or over the D-TRAK output ||ε_θ(x_t, t)||² (``output="square_norm"``).
  Example ``j`` always gets the draws of :func:`diffattr.diffusion.draws.example_draws` for the seed.
- Measurement gradients: ∇_θ m(θ, x) of the measurement functions of :mod:`diffattr.measure.functions`
  (the same definitions the oracles evaluate), with their own Monte-Carlo draws per sample.

Gradients are taken with respect to the K-FAC parameters (every Linear/Conv2d layer; see
:func:`diffattr.curvature.kfac_parameters`) and flattened to ``[n, P]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from diffattr.curvature.data import FlatEps, kfac_parameters
from diffattr.diffusion import Schedule
from diffattr.diffusion.ddpm import EpsModel
from diffattr.diffusion.draws import crn_draws, example_draws, noisy, noisy_inputs
from diffattr.measure import functions as F

OUTPUTS = ("loss", "square_norm")


def training_gradients(
    wrapper: FlatEps,
    images: torch.Tensor,
    indices: torch.Tensor,
    schedule: Schedule,
    mc_samples: int,
    seed: int,
    hflip: bool = False,
    output: str = "loss",
) -> torch.Tensor:
    """Per-example gradients of the MC-averaged training loss (or D-TRAK output), ``[B, P]``.

    Args:
        wrapper: :class:`FlatEps` around the U-Net, in eval mode.
        images: The examples ``[B, C, H, W]`` in model space.
        indices: Their indices in the training set ``[B]`` (they select the draws).
        schedule: Noise schedule.
        mc_samples: Draws per example (250 in the paper).
        seed: Seed of the draws.
        hflip: Random flips as part of the draws.
        output: ``loss`` (||ε - ε_θ||²) or ``square_norm`` (||ε_θ||², D-TRAK).
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    device = images.device
    named = kfac_parameters(wrapper)
    params = {n: p.detach() for n, p in named}
    d = example_draws(indices, mc_samples, tuple(images.shape[1:]), schedule.num_timesteps, seed)
    x_t = noisy_inputs(images, d, schedule, hflip)
    t, eps = d.t.to(device), d.eps.to(device)

    def per_example(p, x, tt, e):
        pred = functional_call(wrapper, p, ({"x": x, "t": tt},))
        target = e.flatten(1) if output == "loss" else torch.zeros_like(pred)
        return (pred - target).pow(2).sum(1).mean()

    # no_grad: torch.func.grad still differentiates; this only stops an outer graph through the norm parameters.
    # MATH attention: the fused CPU attention kernels have no vmap batching rule (a slow per-example fallback).
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        g = vmap(grad(per_example), in_dims=(None, 0, 0, 0))(params, x_t, t, eps)
    return torch.cat([g[n].flatten(1) for n, _ in named], dim=1)


def _measurement_fn(
    measurement: str, schedule: Schedule, output: str, timestep: int | None
) -> Callable[[EpsModel, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """``(eps_model, x0 [1, C, H, W], t [1, n], eps [1, n, C, H, W], traj [1, T + 1, ...] | None) -> m`` (a scalar)."""
    if output == "square_norm":
        if measurement != "loss":
            raise ValueError("the square-norm output replaces the loss measurement only")
        return lambda model, x0, t, eps, traj: F._flat_eps(model, noisy(schedule, x0, t, eps), t).pow(2).flatten(2).sum(-1).mean()
    if measurement == "loss":
        return lambda model, x0, t, eps, traj: F.loss(model, schedule, x0, t, eps).mean()
    if measurement == "elbo":
        return lambda model, x0, t, eps, traj: F.elbo(model, schedule, x0, t, eps).mean()
    if measurement == "timestep_loss":
        if timestep is None:
            raise ValueError("timestep_loss gradients need a timestep")
        return lambda model, x0, t, eps, traj: F.timestep_loss(model, schedule, x0, [timestep], eps).mean()
    if measurement == "trajectory":
        return lambda model, x0, t, eps, traj: F.trajectory(model, schedule, traj)[0]
    raise ValueError(f"unknown measurement {measurement!r}; expected one of {F.MEASUREMENTS}")


def measurement_gradients(
    wrapper: FlatEps,
    samples: torch.Tensor,
    measurement: str,
    schedule: Schedule,
    mc_samples: int,
    seed: int,
    timestep: int | None = None,
    trajectories: torch.Tensor | None = None,
    output: str = "loss",
    batch_size: int = 16,
    first_index: int = 0,
    draw_indices: Sequence[int] | None = None,
) -> torch.Tensor:
    """Gradients of a measurement at each generated sample, ``[S, P]``, vectorised over samples (``torch.func``).

    Args:
        wrapper: :class:`FlatEps` around the U-Net, in eval mode.
        samples: ``[S, C, H, W]`` in model space.
        measurement: ``loss``, ``elbo``, ``timestep_loss`` (needs ``timestep``, a paper step) or ``trajectory``
            (needs ``trajectories`` ``[S, T + 1, C, H, W]``).
        schedule: Noise schedule.
        mc_samples: Draws per sample.
        seed: Seed of the draws (sample ``i`` uses draws ``(seed, first_index + i)``).
        timestep: Paper step for ``timestep_loss``.
        trajectories: Stored sampling trajectories for ``trajectory``.
        output: ``square_norm`` replaces the ``loss`` measurement by the D-TRAK output ||ε_θ||².
        batch_size: Samples per vectorised call (``trajectory`` takes one at a time: each is T model calls).
        first_index: Index of ``samples[0]`` among all samples (a slice gets the draws of its place in the whole).
        draw_indices: The draw-set index of each sample instead (``[S]``; e.g. a sample's index in ``samples.h5``).
    """
    fn = _measurement_fn(measurement, schedule, output, timestep)
    if measurement == "trajectory":
        if trajectories is None:
            raise ValueError("trajectory gradients need the stored trajectories")
        batch_size = 1
    named = kfac_parameters(wrapper)
    params = {n: p.detach() for n, p in named}
    T, shape, device = schedule.num_timesteps, tuple(samples.shape[1:]), samples.device

    def per_sample(p, x0, t, eps, traj):
        def model(x, tt):
            return functional_call(wrapper, p, ({"x": x, "t": tt},)).reshape(x.shape)

        return fn(model, x0[None], t[None], eps[None], None if traj is None else traj[None])

    out = []
    for start in range(0, samples.shape[0], batch_size):
        idx = range(start, min(start + batch_size, samples.shape[0]))
        draws = [crn_draws(seed, first_index + i if draw_indices is None else int(draw_indices[i]), mc_samples, shape, T)
                 for i in idx]
        t = torch.stack([d[0] for d in draws]).to(device)
        eps = torch.stack([d[1] for d in draws]).to(device)
        traj = trajectories[idx.start : idx.stop].to(device) if measurement == "trajectory" else None
        # Same no_grad / MATH-attention reasons as in training_gradients.
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            g = vmap(grad(per_sample), in_dims=(None, 0, 0, 0, None if traj is None else 0))(
                params, samples[idx.start : idx.stop], t, eps, traj
            )
        out.append(torch.cat([g[n].flatten(1) for n, _ in named], dim=1))
    return torch.cat(out)
