"""What curvlinops sees: the model wrapper, the parameters K-FAC covers, and the data (every training example ×
its Monte-Carlo draws)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from diffattr.diffusion import Schedule
from diffattr.diffusion.draws import example_draws, noisy_inputs

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
