"""Pixel space (uint8 in 0..255) and model space (float32 in [-1, 1]): the one place images cross between them."""

from __future__ import annotations

import numpy as np
import torch


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float32 in [-1, 1]."""
    return torch.from_numpy(np.asarray(images)).float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Model-space images in [-1, 1] -> uint8 (rounded, clipped)."""
    x = np.asarray(x, dtype=np.float32)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
