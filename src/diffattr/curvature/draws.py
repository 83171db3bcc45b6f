"""Monte-Carlo draws over training examples and the model wrapper curvlinops sees."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from diffattr.diffusion import Schedule
from diffattr.measure.oracle import crn_generator

#: Layers K-FAC covers (curvlinops supports exactly these); normalisation layers are left out, as in the paper.
KFAC_LAYERS = (nn.Linear, nn.Conv2d)


class FlatEps(nn.Module):
    """``{"x": x_t [B, C, H, W], "t": t [B]} -> ε_θ(x_t, t)`` flattened to ``[B, C·H·W]`` (curvlinops' 2-D output)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, X: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.unet(X["x"], X["t"]).sample.flatten(1)


def kfac_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Named parameters of every Linear/Conv2d layer, in ``model.named_parameters()`` order."""
    keep = {id(p) for m in model.modules() if isinstance(m, KFAC_LAYERS) for p in m.parameters(recurse=False)}
    return [(n, p) for n, p in model.named_parameters() if id(p) in keep and p.requires_grad]


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


def noisy_inputs(x0: torch.Tensor, draws: ExampleDraws, schedule: Schedule, hflip: bool) -> torch.Tensor:
    """x_t for every draw of every example, ``[B, n, C, H, W]`` (flipped copies of x0 where drawn and enabled)."""
    x = x0.unsqueeze(1).expand_as(draws.eps)
    if hflip:
        x = torch.where(draws.flip.to(x.device)[..., None, None, None], x.flip(-1), x)
    t, eps = draws.t.to(x.device), draws.eps.to(x.device)
    return schedule.q_sample(x.flatten(0, 1), t.flatten(), eps.flatten(0, 1)).reshape(eps.shape)


def curvature_batches(
    images: torch.Tensor,
    schedule: Schedule,
    mc_samples: int,
    batch_size: int,
    seed: int,
    hflip: bool,
    device: str | torch.device,
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """curvlinops data: ``({"x": x_t, "t": t}, ε)`` over every training example × ``mc_samples`` draws.

    Rows are example-major: the ``mc_samples`` draws of one example are consecutive (``[B·K, ...]``), so the
    operator decides whether a row (``mc``) or an example's block of rows (``empirical``, eq. 11) is a data point
    (:func:`diffattr.curvature.kfac.build_operator`). ``batch_size`` counts training examples
    (``batch_size * mc_samples`` rows per batch).
    """
    n = images.shape[0]
    shape = tuple(images.shape[1:])
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        d = example_draws(idx, mc_samples, shape, schedule.num_timesteps, seed)
        x_t = noisy_inputs(images[idx].to(device), d, schedule, hflip)
        yield {"x": x_t.flatten(0, 1), "t": d.t.flatten().to(device)}, d.eps.flatten(0, 1).flatten(1).to(device)


class CurvatureData:
    """Re-iterable wrapper of :func:`curvature_batches` (curvlinops loops over the data more than once)."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __iter__(self):
        return curvature_batches(*self.args, **self.kwargs)
