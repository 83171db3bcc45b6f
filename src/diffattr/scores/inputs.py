"""What every gradient-based attribution stage loads: the model, the data, the samples, and the seeds of the draws."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffattr.curvature import FlatEps
from diffattr.data import read_train
from diffattr.diffusion import Schedule
from diffattr.models import load_model
from diffattr.sampling import read_samples
from diffattr.train.loop import to_model_space


def gradient_seeds(influence_cfg: Mapping[str, Any]) -> dict[str, int]:
    """Seeds of the MC draws of query (measurement) and training gradients, shared by K-FAC, TRAK and D-TRAK."""
    return {"query": influence_cfg["seed"] + 2, "train": influence_cfg["seed"] + 1}


@dataclass
class AttributionInputs:
    """The full model (wrapped for curvlinops), its schedule, the training images ``[N, C, H, W]`` and the
    generated samples ``[S, C, H, W]`` in model space, and the stored trajectories (or None)."""

    wrapper: FlatEps
    schedule: Schedule
    images: torch.Tensor
    samples: torch.Tensor
    trajectories: torch.Tensor | None

    @classmethod
    def load(
        cls, config: Mapping[str, Any], model_dir: str | Path, train_path: str | Path, samples_path: str | Path,
        device: str = "cpu",
    ) -> AttributionInputs:
        art = read_samples(samples_path)
        return cls(
            wrapper=FlatEps(load_model(model_dir, device)).eval(),
            schedule=Schedule.from_config(config["diffusion"]),
            images=to_model_space(read_train(train_path)["images"]).to(device),
            samples=torch.from_numpy(art["samples"]).to(device),
            trajectories=torch.from_numpy(art["trajectories"]) if "trajectories" in art.data else None,
        )
