"""Caches of the training-side work of a method (its training rows, features or embeddings).

The pipeline scores every query in one pass and needs no cache (:class:`NoCache`: compute, stream, forget).
``diffattr attribute`` answers new queries against the same model and data many times, so it keeps the training
side on disk (:class:`DirCache`): a second call computes only the query gradients and the dot products.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffattr import __version__
from diffattr.gradients.compress import dequantize_int8, quantize_int8
from diffattr.io import ArtefactError, read_h5, write_h5

log = logging.getLogger(__name__)

Rows = Callable[[torch.Tensor], torch.Tensor]


class NoCache:
    """Compute everything when asked (the pipeline's behaviour)."""

    def matrix(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        return compute()

    def rows(self, key: str, n: int, batch_size: int, fn: Rows, group_sizes: Sequence[int] | None = None,
             progress: bool = True) -> Rows:
        return fn


class DirCache:
    """Matrices kept as HDF5 files under ``root`` (one folder per model, data set and method arguments).

    Args:
        root: The cache folder of one (model, training set, method arguments) key.
        dtype: ``float32`` (exact) or ``int8`` (a quarter of the size; one scale per row and column group, the
            parameter tensors, as the query bank compresses its rows).
    """

    def __init__(self, root: str | Path, dtype: str = "float32") -> None:
        if dtype not in ("float32", "int8"):
            raise ValueError(f"cache dtype must be float32 or int8, got {dtype!r}")
        self.root, self.dtype = Path(root), dtype
        self.computed: list[str] = []  # keys computed (not read) by this object

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.h5"

    def matrix(self, key: str, compute: Callable[[], torch.Tensor],
               group_sizes: Sequence[int] | None = None) -> torch.Tensor:
        path = self._path(key)
        if path.is_file():
            art = read_h5(path)
            if art.attrs["diffattr_version"] != __version__:
                raise ArtefactError(f"{path} was written by diffattr {art.attrs['diffattr_version']}, this is "
                                    f"{__version__}: delete {self.root} (or pass another --cache) and rerun")
            log.info("cache hit: %s", path)
            rows = torch.from_numpy(art["rows"])
            if "scales" in art.data:
                return dequantize_int8(rows, torch.from_numpy(art["scales"]), list(art["group_sizes"]))
            return rows
        value = compute().detach().cpu()
        self.computed.append(key)
        if self.dtype == "int8" and group_sizes is not None:
            q, s = quantize_int8(value.float(), group_sizes)
            write_h5(path, {"rows": q.numpy(), "scales": s.numpy(), "group_sizes": np.asarray(group_sizes)},
                     attrs={"key": key})
            return dequantize_int8(q, s, group_sizes)
        write_h5(path, {"rows": value.numpy()}, attrs={"key": key})
        return value

    def rows(self, key: str, n: int, batch_size: int, fn: Rows, group_sizes: Sequence[int] | None = None,
             progress: bool = True) -> Rows:
        def compute() -> torch.Tensor:
            batches = [torch.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
            return torch.cat([fn(idx).cpu() for idx in tqdm(batches, desc=f"{key} (cached)", disable=not progress,
                                                            mininterval=2)])

        matrix = self.matrix(key, compute, group_sizes)
        return lambda idx: matrix[idx.cpu()]
