"""int8 quantisation of (preconditioned) query gradients (paper appendix C).

Symmetric, per row: q = round(127 · v / max|v|), stored with the row's scale max|v| / 127.
"""

from __future__ import annotations

import torch


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, P]`` float -> (int8 ``[n, P]``, float32 scale ``[n]``)."""
    scale = x.abs().amax(dim=1).float() / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(x.float() / safe[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale

