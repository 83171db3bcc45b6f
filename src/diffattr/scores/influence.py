"""K-FAC influence (paper §3, app. C, G.3): the K-FAC preconditioner of the scoring seam.

τ = ∇mᵀ (G + λI)⁻¹ ∇ℓ_j for every damping λ: the query gradients are preconditioned with a fitted
:class:`~diffattr.curvature.Curvature` for every λ in one pass (:meth:`Curvature.precondition`: rotate into the
Kronecker eigenbasis once, rescale per λ, rotate back); the training rows are the raw training gradients, so every
configured variant is scored in the same pass over the training set (:func:`diffattr.scores.base.score_gradients`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from diffattr.curvature import Curvature
from diffattr.scores.bank import QueryBank


@dataclass
class KFACPreconditioner:
    """``(G + λI)⁻¹`` of a fitted (E)K-FAC curvature for every damping; bank rows int8- or float32-stored."""

    curvature: Curvature
    dampings: Sequence[float]
    compression: str = "int8"
    dtype: torch.dtype = torch.float32

    @property
    def width(self) -> int:
        return sum(self.curvature.sizes)

    @property
    def group_sizes(self) -> Sequence[int]:
        return self.curvature.sizes  # int8 scales per parameter tensor

    def precondition(self, query_grads: torch.Tensor) -> torch.Tensor:
        return self.curvature.precondition(query_grads, self.dampings)


def influence_scores(
    curvature: Curvature,
    query_grads: torch.Tensor,
    train_grads: torch.Tensor,
    dampings: Sequence[float],
    compression: str = "none",
) -> torch.Tensor:
    """τ = ∇m ᵀ (G + λI)⁻¹ ∇ℓ_j for every λ, query and training example: ``[n_damping, n_query, n_train]``."""
    pre = KFACPreconditioner(curvature, dampings, compression)
    bank = QueryBank(compression, pre.group_sizes)
    bank.add(("m", "q"), pre.precondition(query_grads))
    return bank.split(bank.dot(train_grads))[("m", "q")]
