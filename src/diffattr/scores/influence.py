"""K-FAC influence (paper §3, app. C, G.3): the K-FAC preconditioner of the scoring seam.

τ = ∇mᵀ (G + λI)⁻¹ ∇ℓ_j for every damping λ: the query gradients are preconditioned with a fitted
:class:`~diffattr.curvature.Curvature` for every λ in one pass (:meth:`Curvature.precondition`: rotate into the
Kronecker eigenbasis once, rescale per λ, rotate back); the training rows are the raw training gradients, so every
configured variant is scored in the same pass over the training set (:func:`diffattr.scores.base.score_gradients`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from diffattr.curvature import Curvature
from diffattr.queries import Query
from diffattr.scores.bank import QueryBank
from diffattr.scores.base import GradientArgs, GradientInputs, ScoreFile, score_gradients
from diffattr.scores.cache import NoCache


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


@dataclass
class KFACArgs:
    """K-FAC influence arguments saved with every score file: the gradients, the damping sweep, the curvature."""

    gradients: GradientArgs
    dampings: list[float]
    default_damping: float
    curvature: dict[str, Any] = field(default_factory=dict)


def score_kfac(
    curvatures: Sequence[Curvature], inputs: GradientInputs, queries: Sequence[Query] | Mapping[str, Sequence[Query]],
    args: GradientArgs, dampings: Sequence[float], default_damping: float, progress: bool = True, cache: Any = None,
) -> tuple[list[ScoreFile], dict[str, float]]:
    """Every curvature variant × query in one pass over the training gradients (or from ``cache``).

    ``queries``: the same for every variant, or per variant name (e.g. the timestep queries for the first only).
    """
    cache = cache or NoCache()
    pre: Mapping[str, KFACPreconditioner] = {
        c.variant.name: KFACPreconditioner(c, list(dampings), args.compression) for c in curvatures}
    sizes = next(iter(pre.values())).group_sizes
    rows = cache.rows("train_gradients", inputs.images.shape[0], args.batch_size,
                      lambda idx: inputs.training_gradients(idx, args), sizes, progress)
    scores, timings = score_gradients(pre, queries, inputs.samples.shape[0],
                                      lambda q, s0, s1: inputs.query_gradients(q, s0, s1, args), rows,
                                      inputs.images.shape[0], args, progress)
    per_variant = queries if isinstance(queries, Mapping) else {m: queries for m in pre}
    files = [ScoreFile(m, q.name, scores[(m, q.name)], p.dampings, float(default_damping), q.name,
                       KFACArgs(args, list(p.dampings), float(default_damping), p.curvature.args))
             for m, p in pre.items() for q in per_variant[m]]
    return files, timings


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
