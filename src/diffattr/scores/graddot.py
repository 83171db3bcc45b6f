"""The plain gradient dot product τ_j = ∇m(x)ᵀ ∇ℓ(x_j): the identity preconditioner.

This is the "TracIn at the final checkpoint" baseline of the D-TRAK paper (Zheng et al., 2024), with the same
gradients (and Monte-Carlo draws) as K-FAC influence, so the two differ only in the preconditioner. It has no
damping: its score files hold one row with damping NaN, like CLIP's. Added through the scoring seam as one module
plus one registry entry (see ``docs/architecture.md``, "add a method in one file").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from diffattr.queries import Query
from diffattr.scores.base import GradientArgs, GradientInputs, ScoreFile, score_gradients
from diffattr.scores.cache import NoCache


@dataclass
class IdentityPreconditioner:
    """No preconditioning: the bank rows are the query gradients themselves (float32, one undamped row)."""

    width: int
    dampings: Sequence[float] = (math.nan,)
    group_sizes: Sequence[int] | None = None
    diagonal: None = None
    compression: str = "none"
    dtype: torch.dtype = torch.float32

    def precondition(self, query_grads: torch.Tensor) -> torch.Tensor:
        return query_grads[None]


def score(sections: Mapping[str, Any], inputs: GradientInputs, queries: Sequence[Query],
          progress: bool = True, cache: Any = None) -> tuple[list[ScoreFile], dict[str, float]]:
    """Gradient dot products for every query (sections: ``influence``, ``train.hflip``)."""
    args = GradientArgs.from_sections(sections["influence"], sections["train.hflip"])
    rows = (cache or NoCache()).rows("train_gradients", inputs.images.shape[0], args.batch_size,
                                     lambda idx: inputs.training_gradients(idx, args), None, progress)
    scores, timings = score_gradients(
        {"graddot": IdentityPreconditioner(inputs.n_params)}, queries, inputs.samples.shape[0],
        lambda q, s0, s1: inputs.query_gradients(q, s0, s1, args), rows, inputs.images.shape[0], args, progress)
    return [ScoreFile("graddot", q.name, scores[("graddot", q.name)], [math.nan], None, q.name, args)
            for q in queries], timings
