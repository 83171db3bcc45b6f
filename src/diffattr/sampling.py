"""The generated samples artefact ``samples.h5`` (written by the stage ``sample_images``)."""

from __future__ import annotations

from pathlib import Path

from diffattr.io import Artefact, read_h5


def read_samples(path: str | Path) -> Artefact:
    """Read ``samples.h5`` with shape checks: ``samples`` float32 and ``images`` uint8 ``[S, C, H, W]``,
    ``x_T`` and, when stored, ``trajectories`` ``[S, T + 1, C, H, W]``."""
    return read_h5(path, expect={"samples": (None, None, None, None), "images": (None, None, None, None)})
