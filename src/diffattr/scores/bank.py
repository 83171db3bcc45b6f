"""The query bank and the streaming scoring path every gradient-based method goes through (paper app. C, G.3).

Phase 1: the preconditioned query rows of every (method, query, samples) block are stored, optionally int8-compressed,
in one :class:`QueryBank` (per damping, or once per query in a basis where the preconditioner is diagonal:
:class:`Diagonal`). Phase 2 (:func:`stream_scores`): each training row (a training gradient, or a cached
feature) is produced once and dotted with every row of the bank in one matrix product per block of training
examples. :func:`plan_passes` splits a bank larger than its memory budget into passes over the training set, and
:func:`bank_row_bytes` is the size of one row, for the scorer and for ``make estimate`` alike.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from diffattr.gradients.compress import dequantize_int8, quantize_int8

COMPRESSIONS = ("int8", "none")


@dataclass(frozen=True)
class Diagonal:
    """A preconditioner that is diagonal in a rotated basis, ``(G + λI)⁻¹ = Q diag(1 / (e + λ)) Qᵀ`` (K-FAC's
    Kronecker eigenbasis), scored without one bank row per damping.

    A bank block with a ``Diagonal`` holds one row per query, the rotated query ``Qᵀq``, for every damping. At
    scoring time each training row is rotated once per basis and ``τ_λ = (Qᵀq / (e + λ)) · Qᵀg`` is formed per λ, so
    the bank does not grow with the number of dampings. The price is the rotation of every training row, and the
    int8 rounding of ``Qᵀq`` happens before the rescale by ``1 / (e + λ)`` instead of after it
    (``bench/eigen_bank.py`` measures both).

    Attributes:
        basis: Names the rotation: blocks with the same basis share their rotated training rows.
        rotate: Training rows ``[B, P]`` -> their coordinates in the basis ``[B, P]`` (float32).
        eigenvalues: ``e``, ``[P]`` (float64).
        dampings: λ of each score row.
    """

    basis: str
    rotate: Callable[[torch.Tensor], torch.Tensor]
    eigenvalues: torch.Tensor
    dampings: Sequence[float]

    @functools.cached_property
    def inverses(self) -> torch.Tensor:
        """``1 / (e + λ)`` for every λ, ``[n_damping, P]`` float32 on the eigenvalues' device, computed once: every
        chunk of every block of this basis is rescaled with it, for every batch of training rows."""
        e = self.eigenvalues.double()
        return torch.stack([(1.0 / (e + lam)).float() for lam in self.dampings])


@dataclass(frozen=True)
class _Block:
    start: int  # first stored row
    n_damping: int
    n_query: int
    diagonal: Diagonal | None

    @property
    def n_rows(self) -> int:
        """Rows stored: one per query for a diagonal block, one per (damping, query) otherwise."""
        return self.n_query if self.diagonal else self.n_damping * self.n_query


@dataclass
class QueryBank:
    """Preconditioned query gradients of several (method, measurement) blocks, scored as ``[n_damping, n_query, B]``.

    A block is stored as ``[n_damping, n_query, P]`` rows (one per damping), or, with a :class:`Diagonal`, as
    ``[n_query, P]`` rotated rows rescaled per damping at scoring time. Rows are stored as float32
    (``compression="none"``) or as int8 with one float32 scale per row and group of columns
    (``compression="int8"``; the groups are ``group_sizes``, the parameter tensors; see
    :mod:`diffattr.gradients.compress`). :meth:`scores` dequantises ``chunk_bytes`` of rows (at least
    ``min_chunk_rows``) at a time.
    """

    compression: str = "int8"
    group_sizes: Sequence[int] | None = None
    chunk_bytes: int = 256 * 2**20
    # and at least this many rows per chunk: each chunk's product reads every training row once, so one-row chunks
    # of a 38M-parameter model would re-read a batch of training gradients per bank row (on this CPU, 32 x 32 rows at
    # P = 38M: 22.3 s in chunks of 1 row, 11.2 s in chunks of 16)
    min_chunk_rows: int = 16
    dtype: torch.dtype = torch.float32  # of the rows when compression="none" (TRAK's kernel: float64)
    blocks: dict[tuple, _Block] = field(default_factory=dict)
    _rows: list[torch.Tensor] = field(default_factory=list)
    _scales: list[torch.Tensor] = field(default_factory=list)
    _n_rows: int = 0

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")

    def add(self, key: tuple, preconditioned: torch.Tensor, diagonal: Diagonal | None = None) -> None:
        """Add a block under ``key`` (e.g. (method, measurement)): ``[n_damping, n_query, P]`` rows, or with
        ``diagonal`` the rotated queries ``[1, n_query, P]`` (one row each, for all of ``diagonal.dampings``)."""
        n_stored, n_query, p = preconditioned.shape
        if diagonal is not None and n_stored != 1:
            raise ValueError(f"a diagonal block stores one row per query ([1, n_query, P]), got {n_stored} per query")
        flat = preconditioned.reshape(n_stored * n_query, p)
        flat = flat.float() if self.compression == "int8" else flat.to(self.dtype)
        if self.compression == "int8":
            q, s = quantize_int8(flat, self.group_sizes)
            self._rows.append(q)
            self._scales.append(s)
        else:
            self._rows.append(flat)
        n_damping = len(diagonal.dampings) if diagonal else n_stored
        self.blocks[key] = _Block(self._n_rows, n_damping, n_query, diagonal)
        self._n_rows += flat.shape[0]

    @property
    def n_rows(self) -> int:
        return self._n_rows

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._rows + self._scales)

    def _chunks(self, block: _Block, device: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
        """(offset in the block, dequantised rows) of ``chunk_bytes`` at a time."""
        rows = torch.cat(self._rows) if len(self._rows) > 1 else self._rows[0]
        self._rows = [rows]
        if self._scales:
            scales = torch.cat(self._scales) if len(self._scales) > 1 else self._scales[0]
            self._scales = [scales]
        step = max(self.min_chunk_rows, self.chunk_bytes // (4 * rows.shape[1]))
        for first in range(block.start, block.start + block.n_rows, step):
            last = min(first + step, block.start + block.n_rows)
            chunk = rows[first:last].to(device)
            if self.compression == "int8":
                chunk = dequantize_int8(chunk, self._scales[0][first:last].to(device), self.group_sizes)
            yield first - block.start, chunk

    def scores(self, train: torch.Tensor) -> dict[tuple, torch.Tensor]:
        """Every block against training rows ``[B, P]``: ``{key: [n_damping, n_query, B]}`` (float32, or the
        bank's ``dtype``). The training rows are rotated once per :class:`Diagonal` basis."""
        cast = (lambda t: t.float()) if self.compression == "int8" else (lambda t: t.to(self.dtype))
        out: dict[tuple, torch.Tensor] = {}
        by_basis: dict[str | None, list[tuple]] = {}
        for key, block in self.blocks.items():
            by_basis.setdefault(block.diagonal.basis if block.diagonal else None, []).append(key)
        for keys in by_basis.values():  # one rotated copy of the training rows alive at a time
            diagonal = self.blocks[keys[0]].diagonal
            g = cast(train if diagonal is None else diagonal.rotate(train))
            for key in keys:
                block = self.blocks[key]
                res = torch.empty(block.n_damping, block.n_query, g.shape[0], dtype=g.dtype, device=g.device)
                flat = res.view(block.n_damping * block.n_query, -1)
                if block.diagonal is None:
                    for offset, chunk in self._chunks(block, g.device):
                        flat[offset : offset + len(chunk)] = chunk @ g.T
                    out[key] = res
                    continue
                inverses = block.diagonal.inverses.to(device=g.device, dtype=g.dtype)
                for offset, chunk in self._chunks(block, g.device):
                    for d, inverse in enumerate(inverses):
                        res[d, offset : offset + len(chunk)] = (chunk * inverse) @ g.T
                out[key] = res
        return out


def bank_row_bytes(width: int, compression: str, dtype: torch.dtype = torch.float32, n_groups: int = 1) -> int:
    """Bytes of one query-bank row of ``width`` entries (int8: one byte each plus a float32 scale for each of
    ``n_groups`` column groups; none: ``dtype``)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    if compression == "int8":
        return width + 4 * n_groups
    return width * torch.empty((), dtype=dtype).element_size()


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
    out = {k: np.zeros((b.n_damping, b.n_query, n), dtype=np.float32) for k, b in bank.blocks.items()}
    pending: list[torch.Tensor] = []
    done = 0

    def flush() -> None:
        # One bank pass per block of gradients: each pass dequantises every bank row, so blocks of up to
        # ``block_bytes`` of gradients (not single batches) amortise it.
        nonlocal done
        g = torch.cat(pending)
        for k, v in bank.scores(g).items():
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
