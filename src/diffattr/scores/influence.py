"""K-FAC influence (paper §3, app. C, G.3): the K-FAC preconditioner of the scoring seam.

τ = ∇mᵀ (G + λI)⁻¹ ∇ℓ_j for every damping λ: the query gradients are preconditioned with a fitted
:class:`~diffattr.curvature.Curvature` for every λ in one pass (:meth:`Curvature.precondition`: rotate into the
Kronecker eigenbasis once, rescale per λ, rotate back); the training rows are the raw training gradients, so every
configured variant is scored in the same pass over the training set (:func:`diffattr.scores.base.score_gradients`).
With ``influence.query_bank: eigenbasis`` the bank keeps the rotated queries instead, one row for every λ, and each
training gradient is rotated into every variant's eigenbasis as it streams past (paper-scale banks: issue #17).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from diffattr.curvature import Curvature
from diffattr.queries import Query
from diffattr.scores.bank import Diagonal, QueryBank
from diffattr.scores.base import GradientArgs, GradientInputs, ScoreFile, score_gradients
from diffattr.scores.cache import NoCache

QUERY_BANKS = ("per_damping", "eigenbasis")
EIGEN_GROUP = 256  # eigenbasis rows: entries per int8 scale, in eigenvalue order within each parameter tensor


@dataclass
class KFACPreconditioner:
    """``(G + λI)⁻¹`` of a fitted (E)K-FAC curvature for every damping; bank rows int8- or float32-stored.

    ``bank="per_damping"``: one preconditioned row per (query, λ), int8 scales per parameter tensor.
    ``bank="eigenbasis"``: one row per query, its coordinates in the Kronecker eigenbasis, rescaled per λ at scoring
    time against training gradients rotated into the same basis (:class:`~diffattr.scores.bank.Diagonal`): a bank
    ``len(dampings)`` times smaller. Its coordinates are ordered by eigenvalue within each parameter tensor and
    int8-scaled in groups of :data:`EIGEN_GROUP`, so that each scale covers coordinates that every ``1 / (e + λ)``
    rescales alike. One scale per parameter tensor would round the small-eigenvalue coordinates, the ones a small λ
    amplifies most, to zero: on a 40-image model at λ = 1e-8, Spearman 0.85 against float64 instead of 0.999.
    """

    curvature: Curvature
    dampings: Sequence[float]
    compression: str = "int8"
    dtype: torch.dtype = torch.float32
    bank: str = "per_damping"
    diagonal: Diagonal | None = field(init=False, default=None)
    _order: torch.Tensor | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if self.bank not in QUERY_BANKS:
            raise ValueError(f"influence.query_bank must be one of {QUERY_BANKS}, got {self.bank!r}")
        if self.bank == "eigenbasis":
            evals = self.curvature.eigenvalues()
            parts = evals.split(self.curvature.sizes)
            offsets = [0, *itertools.accumulate(self.curvature.sizes)][:-1]
            self._order = torch.cat([torch.argsort(p.cpu(), descending=True, stable=True) + o
                                     for p, o in zip(parts, offsets, strict=True)]).to(evals.device)
            self.diagonal = Diagonal(self.curvature.variant.name, self.rotate, evals[self._order], list(self.dampings))

    @property
    def width(self) -> int:
        return sum(self.curvature.sizes)

    @property
    def group_sizes(self) -> Sequence[int]:
        """int8 scale groups: the parameter tensors, or (eigenbasis) runs of :data:`EIGEN_GROUP` inside them."""
        if self.bank == "per_damping":
            return self.curvature.sizes
        return [min(EIGEN_GROUP, n - k) for n in self.curvature.sizes for k in range(0, n, EIGEN_GROUP)]

    def rotate(self, vecs: torch.Tensor) -> torch.Tensor:
        """``[n, P]`` -> coordinates in the eigenbasis (in the bank's eigenvalue order), float32. Rotated in float64:
        the per-λ rescale divides by small eigenvalues, which would amplify the rounding errors of a float32
        rotation."""
        coords = self.curvature.rotate(vecs.double())
        return (coords if self._order is None else coords[:, self._order.to(coords.device)]).float()

    def precondition(self, query_grads: torch.Tensor) -> torch.Tensor:
        if self.diagonal is not None:
            return self.rotate(query_grads)[None]
        return self.curvature.precondition(query_grads, self.dampings)


@dataclass
class KFACArgs:
    """K-FAC influence arguments saved with every score file: the gradients, the damping sweep, the curvature."""

    gradients: GradientArgs
    dampings: list[float]
    default_damping: float
    curvature: dict[str, Any] = field(default_factory=dict)
    query_bank: str = "per_damping"


def score_kfac(
    curvatures: Sequence[Curvature], inputs: GradientInputs, queries: Sequence[Query] | Mapping[str, Sequence[Query]],
    args: GradientArgs, dampings: Sequence[float], default_damping: float, progress: bool = True, cache: Any = None,
    query_bank: str = "per_damping",
) -> tuple[list[ScoreFile], dict[str, float]]:
    """Every curvature variant × query in one pass over the training gradients (or from ``cache``).

    ``queries``: the same for every variant, or per variant name (e.g. the timestep queries for the first only).
    ``query_bank``: ``per_damping`` or ``eigenbasis`` (:class:`KFACPreconditioner`, ``influence.query_bank``).
    """
    cache = cache or NoCache()
    pre: Mapping[str, KFACPreconditioner] = {
        c.variant.name: KFACPreconditioner(c, list(dampings), args.compression, bank=query_bank) for c in curvatures}
    rows = cache.rows("train_gradients", inputs.images.shape[0], args.batch_size,  # raw gradients: per-tensor scales
                      lambda idx: inputs.training_gradients(idx, args), curvatures[0].sizes, progress)
    scores, timings = score_gradients(pre, queries, inputs.samples.shape[0],
                                      lambda q, s0, s1: inputs.query_gradients(q, s0, s1, args), rows,
                                      inputs.images.shape[0], args, progress)
    per_variant = queries if isinstance(queries, Mapping) else {m: queries for m in pre}
    files = [ScoreFile(m, q.name, scores[(m, q.name)], p.dampings, float(default_damping), q.name,
                       KFACArgs(args, list(p.dampings), float(default_damping), p.curvature.args, query_bank))
             for m, p in pre.items() for q in per_variant[m]]
    return files, timings


def influence_scores(
    curvature: Curvature,
    query_grads: torch.Tensor,
    train_grads: torch.Tensor,
    dampings: Sequence[float],
    compression: str = "none",
    query_bank: str = "per_damping",
) -> torch.Tensor:
    """τ = ∇m ᵀ (G + λI)⁻¹ ∇ℓ_j for every λ, query and training example: ``[n_damping, n_query, n_train]``."""
    pre = KFACPreconditioner(curvature, dampings, compression, bank=query_bank)
    bank = QueryBank(compression, pre.group_sizes)
    bank.add(("m", "q"), pre.precondition(query_grads), pre.diagonal)
    return bank.scores(train_grads)[("m", "q")]
