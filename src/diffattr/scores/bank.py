"""The query bank and the streaming scoring path every gradient-based method goes through (paper app. C, G.3).

Phase 1: the preconditioned query rows of every (method, query, samples) block are stored, optionally int8-compressed,
in one :class:`QueryBank`. Phase 2 (:func:`stream_scores`): each training row (a training gradient, or a cached
feature) is produced once and dotted with every row of the bank in one matrix product per block of training
examples. :func:`plan_passes` splits a bank larger than its memory budget into passes over the training set, and
:func:`bank_row_bytes` is the size of one row, for the scorer and for ``make estimate`` alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from diffattr.gradients.compress import dequantize_int8, quantize_int8

COMPRESSIONS = ("int8", "none")


@dataclass
class QueryBank:
    """Preconditioned query gradients of several (method, measurement) blocks, each ``[n_damping, n_query, P]``.

    Rows are stored as float32 (``compression="none"``) or as int8 with one float32 scale per row and group of
    columns (``compression="int8"``; the groups are ``group_sizes``, the parameter tensors; see
    :mod:`diffattr.gradients.compress`). :meth:`dot` dequantises ``chunk_bytes`` of rows at a time.
    """

    compression: str = "int8"
    group_sizes: Sequence[int] | None = None
    chunk_bytes: int = 256 * 2**20
    dtype: torch.dtype = torch.float32  # of the rows when compression="none" (TRAK's kernel: float64)
    blocks: dict[tuple, tuple[int, int, int]] = field(default_factory=dict)  # -> (start, n_damp, n_query)
    _rows: list[torch.Tensor] = field(default_factory=list)
    _scales: list[torch.Tensor] = field(default_factory=list)
    _n_rows: int = 0

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")

    def add(self, key: tuple, preconditioned: torch.Tensor) -> None:
        """Add a block ``[n_damping, n_query, P]`` under ``key`` (e.g. (method, measurement))."""
        n_damp, n_query, p = preconditioned.shape
        flat = preconditioned.reshape(n_damp * n_query, p)
        flat = flat.float() if self.compression == "int8" else flat.to(self.dtype)
        if self.compression == "int8":
            q, s = quantize_int8(flat, self.group_sizes)
            self._rows.append(q)
            self._scales.append(s)
        else:
            self._rows.append(flat)
        self.blocks[key] = (self._n_rows, n_damp, n_query)
        self._n_rows += flat.shape[0]

    @property
    def n_rows(self) -> int:
        return self._n_rows

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._rows + self._scales)

    def dot(self, train: torch.Tensor) -> torch.Tensor:
        """Every row against training rows ``[B, P]`` -> ``[n_rows, B]`` (float32, or the bank's ``dtype``)."""
        rows = torch.cat(self._rows) if len(self._rows) > 1 else self._rows[0]
        self._rows = [rows]
        if self._scales:
            scales = torch.cat(self._scales) if len(self._scales) > 1 else self._scales[0]
            self._scales = [scales]
        train = train.float() if self.compression == "int8" else train.to(self.dtype)
        step = max(1, self.chunk_bytes // (4 * rows.shape[1]))
        out = []
        for start in range(0, rows.shape[0], step):
            block = rows[start : start + step].to(train.device)
            if self.compression == "int8":
                scale = self._scales[0][start : start + step].to(train.device)
                block = dequantize_int8(block, scale, self.group_sizes)
            out.append(block @ train.T)
        return torch.cat(out)

    def split(self, dots: torch.Tensor) -> dict[tuple, torch.Tensor]:
        """Split the output of :meth:`dot` (``[n_rows, B]``) into ``{key: [n_damping, n_query, B]}``."""
        return {k: dots[s : s + nd * nq].reshape(nd, nq, -1) for k, (s, nd, nq) in self.blocks.items()}



def bank_row_bytes(width: int, compression: str, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of one query-bank row of ``width`` entries (int8: one byte each; none: ``dtype``)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    return width * (1 if compression == "int8" else torch.empty((), dtype=dtype).element_size())


def stream_scores(
    bank: QueryBank,
    train_rows: Callable[[torch.Tensor], torch.Tensor],
    n_train: int,
    batch_size: int,
    progress: bool = True,
    block_bytes: int = 256 * 2**20,
) -> dict[tuple, np.ndarray]:
    """Phase 2: produce each training row once (``train_rows(idx)``, ``[B, P]``) and score every bank row.

    Rows are held until ``block_bytes`` of them (or the last batch) are ready, then scored in one pass.

    Returns:
        ``{key: [n_damping, n_query, n_train]}`` float32.
    """
    n = n_train
    out = {k: np.zeros((nd, nq, n), dtype=np.float32) for k, (_, nd, nq) in bank.blocks.items()}
    pending: list[torch.Tensor] = []
    done = 0

    def flush() -> None:
        # One bank pass per block of gradients: each pass dequantises every bank row, so blocks of up to
        # ``block_bytes`` of gradients (not single batches) amortise it.
        nonlocal done
        g = torch.cat(pending)
        for k, v in bank.split(bank.dot(g)).items():
            out[k][:, :, done : done + len(g)] = v.cpu().numpy()
        done += len(g)
        pending.clear()

    for start in tqdm(range(0, n, batch_size), desc="training gradients", disable=not progress, mininterval=2):
        idx = torch.arange(start, min(start + batch_size, n))
        pending.append(train_rows(idx))
        if sum(p.numel() * p.element_size() for p in pending) >= block_bytes:
            flush()
    if pending:
        flush()
    return out


def plan_passes(
    n_specs: int, n_samples: int, bytes_per_sample: int | Sequence[int], budget: int
) -> list[list[tuple[int, int, int]]]:
    """Split the query bank into passes over the training set that each fit ``budget`` bytes.

    A bank row group is one (query set, sample): ``bytes_per_sample`` covers all its variants and dampings, one
    number for every query set or one per query set (when methods score different queries).

    Returns:
        Per pass, ``(spec index, first sample, end sample)`` ranges, in order; one pass when everything fits.
    """
    sizes = [bytes_per_sample] * n_specs if isinstance(bytes_per_sample, int) else list(bytes_per_sample)
    passes: list[list[tuple[int, int, int]]] = []
    used = budget + 1  # start a new pass at the first unit
    for k in range(n_specs):
        for i in range(n_samples):
            if used + sizes[k] > budget and not (passes and used == 0):
                passes.append([])
                used = 0
            units = passes[-1]
            if units and units[-1][0] == k and units[-1][2] == i:
                units[-1] = (k, units[-1][1], i + 1)
            else:
                units.append((k, i, i + 1))
            used += sizes[k]
    return passes
