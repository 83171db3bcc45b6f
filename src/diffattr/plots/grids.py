"""Image grids as PNG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from diffattr.io import atomic_path


def save_image_grid(images: np.ndarray, path: str | Path, ncol: int | None = None, scale: int = 4, pad: int = 1) -> Path:
    """Tile uint8 images ``[N, C, H, W]`` (C = 1 or 3) into one PNG, each image upscaled ``scale`` times."""
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    canvas = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, ncol)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = im.transpose(1, 2, 0)
    pil = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG")
    return Path(path)
