"""Compression of (preconditioned) query gradients (paper appendix C): int8 quantisation, and the b-bit and
rank-r SVD alternatives of the compression ablation (Fig. 6).

int8 quantisation is what the scores use: symmetric, per row and per group of columns: q = round(127 · v / max|v|) with one scale max|v| / 127 for every
(row, group). The groups are the parameter tensors (a layer's weight, its bias), as in the paper's code, which
quantises each parameter's gradient on its own. One scale per whole row is not enough at small damping: the
preconditioned row is then dominated by a few near-null eigendirections of one layer, and a single scale rounds
most entries of the other layers to zero (on the quickstart model at λ = 1e-8, Spearman 0.87 against unquantised scores, 0.998
with per-parameter scales).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _groups(n_cols: int, group_sizes: Sequence[int] | None) -> list[int]:
    sizes = [n_cols] if group_sizes is None else [int(s) for s in group_sizes]
    if sum(sizes) != n_cols or min(sizes) < 1:
        raise ValueError(f"group sizes {sizes[:5]}... (sum {sum(sizes)}) do not split {n_cols} columns")
    return sizes


def quantize_int8(x: torch.Tensor, group_sizes: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, P]`` float -> (int8 ``[n, P]``, float32 scales ``[n, n_groups]``); one group of all P by default."""
    qs, scales = [], []
    for part in x.float().split(_groups(x.shape[1], group_sizes), dim=1):
        scale = part.abs().amax(dim=1) / 127.0
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        qs.append(torch.round(part / safe[:, None]).clamp_(-127, 127).to(torch.int8))
        scales.append(scale)
    return torch.cat(qs, dim=1), torch.stack(scales, dim=1)


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, group_sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Inverse of :func:`quantize_int8` (up to rounding), float32 ``[n, P]``."""
    out = q.float()
    for part, scale in zip(out.split(_groups(q.shape[1], group_sizes), dim=1), scales.unbind(1), strict=True):
        part.mul_(scale[:, None])  # in place, through the view
    return out


def quantize_dequantize(x: torch.Tensor, bits: int, group_sizes: Sequence[int] | None = None) -> tuple[torch.Tensor, int]:
    """``x`` ``[n, P]`` through symmetric ``bits``-bit quantisation per (row, group) and back (the compression
    ablation, paper Fig. 6; :func:`quantize_int8` is the 8-bit case the scores use).

    Returns:
        The dequantised float32 ``[n, P]`` and the bits stored per row (``bits`` per entry + a float32 scale per
        group).
    """
    levels = 2 ** (bits - 1) - 1
    parts = []
    for part in x.float().split(_groups(x.shape[1], group_sizes), dim=1):
        scale = part.abs().amax(dim=1, keepdim=True) / levels
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        parts.append(torch.round(part / safe).clamp_(-levels, levels) * scale)
    return torch.cat(parts, dim=1), bits * x.shape[1] + 32 * len(_groups(x.shape[1], group_sizes))


def svd_compress(x: torch.Tensor, shapes: Sequence[Sequence[int]], rank: int) -> tuple[torch.Tensor, int]:
    """``x`` ``[n, P]`` with each parameter matrix (a weight ``[out, ...]`` as ``[out, in·k·k]``) replaced by its
    best rank-``rank`` approximation, as Grosse et al. (2023) compress query gradients; vectors (biases) are kept.

    Returns:
        The compressed float32 ``[n, P]`` and the float32 bits stored per row (r·(out + in) per matrix, the
        vectors in full).
    """
    parts, bits = [], 0
    for part, shape in zip(x.float().split([math.prod(s) for s in shapes], dim=1), shapes, strict=True):
        if len(shape) < 2:
            parts.append(part)
            bits += 32 * part.shape[1]
            continue
        mat = part.reshape(part.shape[0], shape[0], -1)
        r = min(rank, *mat.shape[1:])
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)
        parts.append(((u[..., :r] * s[:, None, :r]) @ vh[:, :r]).reshape(part.shape))
        bits += 32 * r * sum(mat.shape[1:])
    return torch.cat(parts, dim=1), bits
