"""Random training subsets for the linear data-modelling score (``subsets.h5``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffattr.data.sources import DataError
from diffattr.io import Artefact, read_h5


def draw_subsets(n_train: int, n_subsets: int, fraction: float, seeds_per_subset: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw M random subsets of size ``round(fraction * n_train)`` without replacement, and K seeds for each.

    Args:
        n_train: N, the training-set size.
        n_subsets: M.
        fraction: Subset size as a fraction of N.
        seeds_per_subset: K.
        seed: Seed of ``numpy.random.default_rng``.

    Returns:
        ``masks`` bool ``[M, N]`` and ``seeds`` int64 ``[M, K]`` (distinct training seeds).
    """
    size = int(round(fraction * n_train))
    if not 0 < size < n_train:
        raise DataError(f"subsets.fraction={fraction} of {n_train} training images gives an empty or full subset")
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_subsets, n_train), dtype=bool)
    for m in range(n_subsets):
        masks[m, rng.choice(n_train, size=size, replace=False)] = True
    seeds = rng.choice(2**31 - 1, size=n_subsets * seeds_per_subset, replace=False).reshape(n_subsets, seeds_per_subset)
    return masks, seeds.astype(np.int64)


def read_subsets(path: str | Path) -> Artefact:
    """Read ``subsets.h5`` with shape checks."""
    return read_h5(path, expect={"masks": (None, None), "seeds": (None, None)})
