"""The one scoring seam (kronfluence-style: a method is a preconditioner plus typed arguments).

A gradient-based method is a :class:`Preconditioner`: it maps query gradients ``[n, P]`` to the bank rows
``[n_damping, n, k]`` and says what a *training row* is (the raw training gradient for K-FAC and the plain gradient
dot product; TRAK's projected, kernel-rotated feature). Every gradient method is then scored by
:func:`score_gradients`, the same code path for all: query gradients → preconditioned rows in one
:class:`~diffattr.scores.bank.QueryBank` → one streaming pass over the training rows (more only when the bank
exceeds its memory budget). A similarity method (CLIP) returns its scores directly.

What a method writes is a list of :class:`ScoreFile` (one per query), each with the typed argument dataclass that
made it (saved as the ``args`` attribute, next to the ``timings``); :func:`write_score_files` writes them in the
one score format (:mod:`diffattr.scores.io`). The registry of methods is :mod:`diffattr.scores.registry`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from diffattr.config import gradient_mc_counts
from diffattr.curvature import FlatEps, kfac_parameters
from diffattr.data import read_train
from diffattr.data.space import to_model_space
from diffattr.diffusion import Schedule
from diffattr.gradients import measurement_gradients, training_gradients
from diffattr.models import load_model
from diffattr.queries import Query
from diffattr.sampling import read_samples
from diffattr.scores.bank import Diagonal, QueryBank, bank_row_bytes, plan_passes, stream_scores
from diffattr.scores.io import write_scores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GradientArgs:
    """How every gradient-based method draws its gradients (the ``influence`` section, shared by K-FAC, TRAK,
    D-TRAK and the gradient dot product, so all see the same Monte-Carlo draws).

    Attributes:
        mc_samples: (t, ε) draws per gradient (``influence.gradient_mc_samples``).
        batch_size: Examples per vectorised gradient call.
        seed: ``influence.seed``; query draws use seed + 2, training draws seed + 1.
        hflip: Random flips are part of the training draws (``train.hflip``).
        compression: Query-bank storage (``influence.query_compression``).
        bank_memory_mb: Query-bank budget per pass over the training set.
    """

    mc_samples: int
    batch_size: int
    seed: int
    hflip: bool
    compression: str = "int8"
    bank_memory_mb: int = 16384

    @classmethod
    def from_sections(cls, influence: Mapping[str, Any], hflip: bool) -> GradientArgs:
        """From the ``influence`` section (its first gradient MC count) and ``train.hflip``."""
        return cls(gradient_mc_counts(influence)[0], int(influence["batch_size"]), int(influence["seed"]),
                   bool(hflip), influence["query_compression"], int(influence["bank_memory_mb"]))

    @property
    def seeds(self) -> dict[str, int]:
        """Seeds of the query (measurement) and training-gradient draws."""
        return {"query": self.seed + 2, "train": self.seed + 1}


@dataclass
class GradientInputs:
    """The full model (wrapped for curvlinops), its schedule, the training images ``[N, C, H, W]`` and the
    generated samples ``[S, C, H, W]`` in model space, and the stored trajectories (or None)."""

    wrapper: FlatEps
    schedule: Schedule
    images: torch.Tensor
    samples: torch.Tensor
    trajectories: torch.Tensor | None
    draw_indices: list[int] | None = None  # each sample's draw-set index (default: its position)

    @classmethod
    def load(cls, model_dir: str | Path, train_path: str | Path, samples_path: str | Path,
             diffusion: Mapping[str, Any], device: str = "cpu") -> GradientInputs:
        art = read_samples(samples_path)
        return cls(
            wrapper=FlatEps(load_model(model_dir, device)).eval(),
            schedule=Schedule.from_config(diffusion),
            images=to_model_space(read_train(train_path)["images"]).to(device),
            samples=torch.from_numpy(art["samples"]).to(device),
            trajectories=torch.from_numpy(art["trajectories"]) if "trajectories" in art.data else None,
        )

    def shard(self, start: int, end: int) -> GradientInputs:
        """The same inputs with only samples ``start..end``; their query draws stay those of their place among all
        samples, so sharded scores equal unsharded ones."""
        ids = list(range(start, end)) if self.draw_indices is None else list(self.draw_indices[start:end])
        traj = None if self.trajectories is None else self.trajectories[start:end]
        return dataclasses.replace(self, samples=self.samples[start:end], trajectories=traj, draw_indices=ids)

    @property
    def n_params(self) -> int:
        """P: the parameters K-FAC covers, the length of every gradient."""
        return sum(p.numel() for _, p in kfac_parameters(self.wrapper))

    def training_gradients(self, idx: torch.Tensor, args: GradientArgs, output: str = "loss") -> torch.Tensor:
        """Per-example gradients ``[B, P]`` of training examples ``idx`` (their own draws)."""
        return training_gradients(self.wrapper, self.images[idx], idx, self.schedule, args.mc_samples,
                                  args.seeds["train"], args.hflip, output)

    def query_gradients(self, query: Query, s0: int, s1: int, args: GradientArgs, output: str = "loss") -> torch.Tensor:
        """Gradients ``[s1 - s0, P]`` of ``query`` at samples ``s0:s1`` (``square_norm``: D-TRAK's output)."""
        traj = None if self.trajectories is None else self.trajectories[s0:s1]
        ids = None if self.draw_indices is None else self.draw_indices[s0:s1]
        if output == "square_norm":
            return measurement_gradients(self.wrapper, self.samples[s0:s1], "loss", self.schedule, args.mc_samples,
                                         args.seeds["query"], output=output, batch_size=args.batch_size,
                                         first_index=s0, draw_indices=ids)
        return measurement_gradients(self.wrapper, self.samples[s0:s1], query.measurement, self.schedule,
                                     args.mc_samples, args.seeds["query"], query.timestep, traj,
                                     batch_size=args.batch_size, first_index=s0, draw_indices=ids)


@dataclass
class ImageInputs:
    """Training images ``[N, C, H, W]`` and generated samples ``[S, C, H, W]`` in [0, 1] (similarity methods)."""

    images: torch.Tensor
    samples: torch.Tensor
    device: str = "cpu"  # where the method's model runs (the images stay on the CPU)

    @classmethod
    def load(cls, train_path: str | Path, samples_path: str | Path, device: str = "cpu") -> ImageInputs:
        return cls(torch.from_numpy(np.asarray(read_train(train_path)["images"])).float() / 255.0,
                   torch.from_numpy(np.asarray(read_samples(samples_path)["images"])).float() / 255.0, device)


class Preconditioner(Protocol):
    """What a gradient-based method is: query gradients -> bank rows, and what the training rows are.

    Attributes:
        dampings: λ of each bank row group (``[nan]`` for an undamped method).
        width: Entries per bank row (k: P for gradients, the projection dimension for TRAK).
        group_sizes: Column groups for int8 compression (the parameter tensors), or None.
        compression: ``int8`` or ``none``; ``dtype`` is the bank's float type for ``none``.
        diagonal: None, or the basis in which the method is diagonal: then the bank holds one row per query and
            the dampings are applied at scoring time (:class:`~diffattr.scores.bank.Diagonal`).
    """

    dampings: Sequence[float]
    width: int
    group_sizes: Sequence[int] | None
    compression: str
    dtype: torch.dtype
    diagonal: Diagonal | None

    def precondition(self, query_grads: torch.Tensor) -> torch.Tensor:
        """``[n, P]`` query gradients -> ``[n_damping, n, k]`` bank rows (``[1, n, k]`` with ``diagonal``)."""


@dataclass
class ScoreFile:
    """One score file: ``scores`` ``[n_damping, S, N]`` of ``method`` for ``query``, with the arguments that made
    it (a dataclass, saved as JSON) and what a positive score predicts an increase of."""

    method: str
    query: str
    scores: np.ndarray
    dampings: Sequence[float]
    default_damping: float | None
    predicts: str
    args: Any
    attrs: dict[str, Any] = field(default_factory=dict)


def score_gradients(
    preconditioners: Mapping[str, Preconditioner],
    queries: Sequence[Query] | Mapping[str, Sequence[Query]],
    n_samples: int,
    query_gradients: Callable[[Query, int, int], torch.Tensor],
    train_rows: Callable[[torch.Tensor], torch.Tensor],
    n_train: int,
    args: GradientArgs,
    progress: bool = True,
) -> tuple[dict[tuple[str, str], np.ndarray], dict[str, float]]:
    """Score every (method, query) through one query bank and one stream of training rows per pass.

    Several preconditioners that share their training rows (the K-FAC variants) are scored in the same pass.
    ``queries`` is one list for every method, or a list per method (a query's gradients are computed once for all
    methods that score it). There is one pass over the training set unless the bank exceeds
    ``args.bank_memory_mb`` (:func:`~diffattr.scores.bank.plan_passes`).

    Returns:
        ``{(method, query name): [n_damping, S, N]}`` float32 and the wall-time breakdown in seconds
        (``query_gradients``, ``precondition``, ``train_rows_and_scoring``, and ``passes``).
    """
    per_method = queries if isinstance(queries, Mapping) else {m: list(queries) for m in preconditioners}
    specs = list(dict.fromkeys(q for m in preconditioners for q in per_method[m]))  # each query once, in order
    users = {q: [m for m in preconditioners if q in per_method[m]] for q in specs}
    first = next(iter(preconditioners.values()))
    row_bytes = bank_row_bytes(first.width, first.compression, first.dtype, len(first.group_sizes or [0]))
    per_sample = [sum(stored_rows(preconditioners[m]) for m in users[q]) * row_bytes for q in specs]
    passes = plan_passes(len(specs), n_samples, per_sample, args.bank_memory_mb * 2**20)
    if len(passes) > 1:
        log.warning("the query bank needs %.1f GB, more than influence.bank_memory_mb = %d MB: scoring in %d passes "
                    "over the training set, each recomputing the training rows",
                    n_samples * sum(per_sample) / 1e9, args.bank_memory_mb, len(passes))
    scores = {(m, q.name): np.zeros((len(preconditioners[m].dampings), n_samples, n_train), dtype=np.float32)
              for q in specs for m in users[q]}
    timings = {"query_gradients": 0.0, "precondition": 0.0, "train_rows_and_scoring": 0.0}
    for k, units in enumerate(passes):
        bank = QueryBank(first.compression, first.group_sizes, dtype=first.dtype)
        for spec, s0, s1 in units:
            query = specs[spec]
            t0 = time.perf_counter()
            q = query_gradients(query, s0, s1)
            timings["query_gradients"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            for method in users[query]:
                pre = preconditioners[method]
                bank.add((method, query.name, s0), pre.precondition(q), pre.diagonal)
            timings["precondition"] += time.perf_counter() - t0
        log.info("pass %d/%d: query bank of %d rows, %.1f MB (%s)", k + 1, len(passes), bank.n_rows,
                 bank.nbytes() / 1e6, first.compression)
        t0 = time.perf_counter()
        for (method, name, s0), values in stream_scores(bank, train_rows, n_train, args.batch_size, progress).items():
            scores[(method, name)][:, s0 : s0 + values.shape[1]] = values
        timings["train_rows_and_scoring"] += time.perf_counter() - t0
    timings["passes"] = float(len(passes))
    return scores, timings


def stored_rows(pre: Preconditioner) -> int:
    """Bank rows a preconditioner stores per query: one per damping, or one for all with a ``diagonal``."""
    return 1 if pre.diagonal is not None else len(pre.dampings)


def write_score_files(files: Sequence[ScoreFile], paths: Sequence[str | Path], timings: Mapping[str, float]) -> None:
    """Write each :class:`ScoreFile` to the output path of its (method, query) (``scores/{method}/{query}.h5``)."""
    by_key = {score_file_key(p): Path(p) for p in paths}
    made = {(f.method, f.query) for f in files}
    if made != set(by_key):
        raise ValueError(f"the stage made scores for {sorted(made)} but its rule declares {sorted(by_key)}")
    for f in files:
        args = dataclasses.asdict(f.args) if dataclasses.is_dataclass(f.args) else dict(f.args)
        write_scores(by_key[(f.method, f.query)], f.scores, f.dampings, f.method, f.query, f.default_damping,
                     predicts=f.predicts, config=args, attrs={"args": args, **f.attrs, "timings": dict(timings)})


def score_file_key(path: str | Path) -> tuple[str, str]:
    """(method, query) of a score file path ``.../scores/{method}/{query}.h5``."""
    p = Path(path)
    return p.parent.name, p.stem
