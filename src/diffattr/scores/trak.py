"""TRAK and D-TRAK for diffusion models (Georgiev et al., 2023; Zheng et al., 2024), paper §4 and app. G.3/G.4.

Features: per-example gradients (the K-FAC path's gradients: same MC draws) projected with the ``traker``
package's Johnson–Lindenstrauss projectors and scaled by 1/√k, so that inner products are preserved in
expectation: φ = Pᵀ∇/√k, ``Φ`` ``[N, k]``.

Scores: τ_j = φ(x)ᵀ (ΦᵀΦ/N + λI)⁻¹ φ(x_j). ΦᵀΦ/N is the projected empirical Fisher of the **data-set mean**
loss (paper eq. 11), so λ is on the same scale as K-FAC's damping; :mod:`diffattr.scores.io` says how it maps
onto the dampings of TRAK's own code and of the paper's figures. One float64 eigendecomposition of ΦᵀΦ/N serves
every λ. Through the scoring seam: the training rows are the features rotated into that eigenbasis, ΦV, and each
query's bank rows are φ(x)ᵀV / (e + λ), so the bank never grows with more than one rotation.

D-TRAK: the same with the square-norm output ||ε_θ(x_t, t)||² in place of the loss, for the training and the
query gradients.

TRAK in float16 (``trak_fp16``, paper Fig. 20): the features, the kernel ΦᵀΦ/N + λI, its inverse and the scores are
float16 numbers (:class:`HalfTrakPreconditioner`), so small dampings vanish in the rounding and large kernels
overflow; the non-finite scores that result are kept (NaN LDS, marked in the figure).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from trak.projectors import BasicProjector, ProjectionType

from diffattr.queries import Query
from diffattr.scores.base import GradientArgs, GradientInputs, ScoreFile, score_gradients
from diffattr.scores.cache import NoCache

log = logging.getLogger(__name__)


# Training gradients projected per call: traker's BasicProjector regenerates its matrix blocks on every call, so
# larger blocks amortise that (on an H200 one call at k = 32768 on ddpm_cifar costs about 130 s, bench/unit_costs.py).
TRAK_BLOCK = 128


def make_projector(grad_dim: int, proj_dim: int, seed: int, device: str | torch.device, max_batch_size: int = 32):
    """traker's CUDA projector when ``fast_jl`` is importable on a GPU, else its ``BasicProjector`` (Rademacher)."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            import fast_jl  # noqa: F401
            from trak.projectors import CudaProjector

            return CudaProjector(grad_dim, proj_dim, seed, ProjectionType.rademacher, device, max_batch_size)
        except ImportError:
            log.warning("fast_jl is not installed: using traker's BasicProjector on the GPU")
    # Keep one block of the projection matrix at most ~512 MB; BasicProjector regenerates the blocks per call.
    block = max(1, min(proj_dim, (512 * 2**20) // (4 * grad_dim)))
    cls = HeldBlocksProjector if 4 * grad_dim * proj_dim <= HELD_PROJECTION_BYTES else BasicProjector
    return cls(grad_dim, proj_dim, seed, ProjectionType.rademacher, device, block_size=block)


# A projection matrix up to this size is generated once and kept (HeldBlocksProjector); larger ones are regenerated
# block by block on every call, as traker's BasicProjector does.
HELD_PROJECTION_BYTES = 2 * 2**30


class HeldBlocksProjector(BasicProjector):
    """traker's :class:`BasicProjector` with its matrix blocks generated once and kept.

    BasicProjector regenerates every block on every call when the matrix has more than one block (on one CPU thread
    about 2.4 s per 190k x 705 block of the quickstart U-Net, 7 s per call). traker has no option to keep them, so
    this subclass generates the same blocks from the same generator states once and multiplies block by block
    exactly as :meth:`BasicProjector.project` does: its projections equal BasicProjector's bit for bit
    (``tests/scores/test_trak.py``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.blocks: list[torch.Tensor] | None = None

    def project(self, grads: torch.Tensor, model_id: int) -> torch.Tensor:
        if self.num_blocks == 1 or model_id != self.model_id:
            self.blocks = None
            return super().project(grads, model_id)
        if self.blocks is None:
            self.blocks = []
            for state in self.generator_states:
                self.proj_matrix_available = False  # generate_sketch_matrix allocates a new block
                self.generate_sketch_matrix(state)
                self.blocks.append(self.proj_matrix)
        grads = grads.to(dtype=self.dtype)
        sketch = torch.zeros(size=(grads.size(0), self.proj_dim), dtype=self.dtype, device=self.device)
        for ind, block in enumerate(self.blocks):
            st, ed = ind * self.block_size, min((ind + 1) * self.block_size, self.proj_dim)
            sketch[:, st:ed] = grads @ block[:, : (ed - st)]
        return sketch


def project(projector, grads: torch.Tensor) -> torch.Tensor:
    """``[B, P]`` -> ``[B, k]`` features, scaled by 1/√k (inner products preserved in expectation)."""
    return projector.project(grads.float().contiguous(), model_id=0) / math.sqrt(projector.proj_dim)


def trak_scores(query: torch.Tensor, train: torch.Tensor, dampings: Sequence[float]) -> torch.Tensor:
    """φ_qᵀ (ΦᵀΦ/N + λI)⁻¹ φ_j for every λ, from one eigendecomposition: ``[n_damping, n_query, N]``.

    The reference form (tests); the stages score through :class:`TrakPreconditioner` and the query bank.

    Args:
        query: Query features ``[n_query, k]``.
        train: Training features Φ ``[N, k]``.
        dampings: λ on the scale of the data-set-mean GGN.
    """
    pre = TrakPreconditioner.fit(None, train, dampings)
    return torch.stack([(r @ pre.train_rows.T).float() for r in pre.rotate(query)])


@dataclass
class TrakArgs:
    """TRAK / D-TRAK arguments (``trak`` section) and the gradients they project (``influence``)."""

    gradients: GradientArgs
    output: str  # the gradient's output: "loss" (TRAK) or "square_norm" (D-TRAK)
    projection_dim: int
    projection_seed: int
    dampings: list[float]
    default_damping: float


@dataclass
class TrakPreconditioner:
    """The projected kernel (ΦᵀΦ/N + λI)⁻¹ in its eigenbasis V: bank rows φ(x)ᵀV/(e + λ) (float64), training rows
    ΦV (cached, so scoring does not recompute the training gradients)."""

    projector: Any
    evals: torch.Tensor
    evecs: torch.Tensor
    train_rows: torch.Tensor
    dampings: Sequence[float]
    group_sizes: None = None
    diagonal: None = None  # the rows are per damping (k is small)
    compression: str = "none"
    dtype: torch.dtype = torch.float64

    @classmethod
    def fit(cls, projector: Any, features: torch.Tensor, dampings: Sequence[float]) -> TrakPreconditioner:
        """One float64 eigendecomposition of ΦᵀΦ/N from the training features ``[N, k]``."""
        phi = features.double()
        evals, evecs = torch.linalg.eigh(phi.T @ phi / phi.shape[0])
        return cls(projector, evals.clamp(min=0), evecs, phi @ evecs, list(dampings))

    @property
    def width(self) -> int:
        return self.evecs.shape[0]

    def rotate(self, features: torch.Tensor) -> torch.Tensor:
        """Query features ``[n, k]`` -> ``[n_damping, n, k]`` rows φᵀV/(e + λ)."""
        q_rot = features.double() @ self.evecs
        return torch.stack([q_rot / (self.evals + lam) for lam in self.dampings])

    def precondition(self, query_grads: torch.Tensor) -> torch.Tensor:
        return self.rotate(project(self.projector, query_grads))


@dataclass
class HalfTrakPreconditioner:
    """TRAK with every stored number in float16 (paper Fig. 20): K = ΦᵀΦ/N and K + λI rounded to float16 (a λ below
    float16's resolution of K's diagonal is lost), (K + λI)⁻¹ rounded to float16, bank rows φ(x)ᵀ(K + λI)⁻¹ and the
    scores computed in float16. torch has no float16 matrix inverse, so the inverse of the float16 matrix is taken
    in float32 and rounded; a singular one (info ≠ 0) gives NaN rows, as the paper's × cells."""

    projector: Any
    inverses: torch.Tensor  # [n_damping, k, k] float16
    train_rows: torch.Tensor  # Φ [N, k] float16
    dampings: Sequence[float]
    group_sizes: None = None
    diagonal: None = None  # the rows are per damping (k is small)
    compression: str = "none"
    dtype: torch.dtype = torch.float16

    @classmethod
    def fit(cls, projector: Any, features: torch.Tensor, dampings: Sequence[float]) -> HalfTrakPreconditioner:
        phi = features.half()
        kernel = (phi.T @ phi) / phi.shape[0]
        eye = torch.eye(kernel.shape[0], dtype=torch.float16, device=kernel.device)
        inverses = []
        for lam in dampings:
            inv, info = torch.linalg.inv_ex((kernel + eye * lam).float())
            inverses.append(torch.full_like(inv, float("nan")) if int(info) != 0 else inv)
        return cls(projector, torch.stack(inverses).half(), phi, list(dampings))

    @property
    def width(self) -> int:
        return self.train_rows.shape[1]

    def rotate(self, features: torch.Tensor) -> torch.Tensor:
        """Query features ``[n, k]`` -> ``[n_damping, n, k]`` float16 rows φᵀ(K + λI)⁻¹."""
        return torch.stack([features.half() @ inv for inv in self.inverses])

    def precondition(self, query_grads: torch.Tensor) -> torch.Tensor:
        return self.rotate(project(self.projector, query_grads))


def train_features(inputs: GradientInputs, args: TrakArgs, projector: Any, progress: bool = True,
                   start: int = 0, end: int | None = None) -> torch.Tensor:
    """Projected training gradients Φ ``[end - start, k]`` of training examples ``start..end`` (default: all),
    :data:`TRAK_BLOCK` examples per projector call. A training example's features do not depend on the range."""
    end, g = inputs.images.shape[0] if end is None else end, args.gradients
    bs = max(g.batch_size, TRAK_BLOCK)
    feats = []
    for first in tqdm(range(start, end, bs), desc=f"{args.output} features", disable=not progress, mininterval=2):
        idx = torch.arange(first, min(first + bs, end))
        grads = torch.cat([inputs.training_gradients(i, g, args.output) for i in idx.split(g.batch_size)])
        feats.append(project(projector, grads))
    return torch.cat(feats)


def trak_args(sections: Mapping[str, Any], output: str) -> TrakArgs:
    """TRAK's arguments from its config sections (``trak``, ``influence``, ``train.hflip``) for a gradient output."""
    tcfg = sections["trak"]
    return TrakArgs(GradientArgs.from_sections(sections["influence"], sections["train.hflip"]), output,
                    int(tcfg["projection_dim"]), int(tcfg["seed"]), list(tcfg["dampings"]),
                    float(tcfg["default_damping"]))


def feature_args(args: TrakArgs) -> dict[str, Any]:
    """What shapes the training features (saved with feature shards): the gradients, output and projection."""
    g = args.gradients
    return {"mc_samples": g.mc_samples, "seed": g.seed, "hflip": g.hflip, "output": args.output,
            "projection_dim": args.projection_dim, "projection_seed": args.projection_seed}


def _score(method: str, output: str, sections: Mapping[str, Any], inputs: GradientInputs, queries: Sequence[Query],
           progress: bool, cache: Any, half: bool = False) -> tuple[list[ScoreFile], dict[str, float]]:
    args = trak_args(sections, output)
    device = inputs.images.device
    projector = make_projector(inputs.n_params, args.projection_dim, args.projection_seed, device)
    t0 = time.perf_counter()
    features = (cache or NoCache()).matrix(f"{output}_features", lambda: train_features(inputs, args, projector, progress))
    pre = (HalfTrakPreconditioner if half else TrakPreconditioner).fit(projector, features.to(device), args.dampings)
    fit_s = time.perf_counter() - t0
    # D-TRAK's query gradient is the square-norm output's whatever the measurement, so one query's scores are every
    # query's: scored once (on the quickstart, 9 queries' gradients and projections cost 46 s of a 52 s job)
    scored = queries[:1] if output == "square_norm" else list(queries)
    scores, timings = score_gradients(
        {method: pre}, scored, inputs.samples.shape[0],
        lambda q, s0, s1: inputs.query_gradients(q, s0, s1, args.gradients, output),
        lambda idx: pre.train_rows[idx.to(pre.train_rows.device)], inputs.images.shape[0], args.gradients, progress)
    predicts = (lambda q: "square_norm") if output == "square_norm" else (lambda q: q.name)
    source = (lambda q: scored[0]) if output == "square_norm" else (lambda q: q)
    files = [ScoreFile(method, q.name, scores[(method, source(q).name)], args.dampings, args.default_damping,
                       predicts(q), args, {"projector": type(projector).__name__}) for q in queries]
    return files, {"train_features": fit_s, **timings}


def score_trak(sections: Mapping[str, Any], inputs: GradientInputs, queries: Sequence[Query],
               progress: bool = True, cache: Any = None) -> tuple[list[ScoreFile], dict[str, float]]:
    """TRAK scores for every query (sections: ``trak``, ``influence``, ``train.hflip``)."""
    return _score("trak", "loss", sections, inputs, queries, progress, cache)


def score_dtrak(sections: Mapping[str, Any], inputs: GradientInputs, queries: Sequence[Query],
                progress: bool = True, cache: Any = None) -> tuple[list[ScoreFile], dict[str, float]]:
    """D-TRAK scores: the square-norm output's gradients for training examples and queries alike."""
    return _score("dtrak", "square_norm", sections, inputs, queries, progress, cache)


def score_trak_fp16(sections: Mapping[str, Any], inputs: GradientInputs, queries: Sequence[Query],
                    progress: bool = True, cache: Any = None) -> tuple[list[ScoreFile], dict[str, float]]:
    """TRAK scores computed in float16 (paper Fig. 20): :class:`HalfTrakPreconditioner`."""
    return _score("trak_fp16", "loss", sections, inputs, queries, progress, cache, half=True)
