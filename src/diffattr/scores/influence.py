"""K-FAC influence scores with query batching and int8-compressed preconditioned queries (paper §3, app. C, G.3).

Phase 1 (once): measurement (query) gradients are preconditioned with every curvature variant and every damping
in one pass per variant (:meth:`Curvature.precondition`: rotate into the Kronecker eigenbasis once, rescale per
λ, rotate back) and stored compressed in one :class:`QueryBank`.
Phase 2 (streaming): each training gradient is computed once and dotted with every row of the bank
(all variants × measurements × dampings × samples) in one matrix product per block of training examples.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from diffattr.curvature import Curvature, load_curvature
from diffattr.gradients import dequantize_int8, measurement_gradients, quantize_int8, training_gradients
from diffattr.scores.inputs import AttributionInputs, gradient_seeds
from diffattr.scores.io import write_scores

log = logging.getLogger(__name__)

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
    blocks: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict)  # -> (start, n_damp, n_query)
    _rows: list[torch.Tensor] = field(default_factory=list)
    _scales: list[torch.Tensor] = field(default_factory=list)
    _n_rows: int = 0

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")

    def add(self, key: tuple[str, str], preconditioned: torch.Tensor) -> None:
        """Add a block ``[n_damping, n_query, P]`` under ``key`` = (method, measurement)."""
        n_damp, n_query, p = preconditioned.shape
        flat = preconditioned.reshape(n_damp * n_query, p).float()
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
        """Every row against training gradients ``[B, P]`` -> ``[n_rows, B]`` (float32)."""
        rows = torch.cat(self._rows) if len(self._rows) > 1 else self._rows[0]
        self._rows = [rows]
        if self._scales:
            scales = torch.cat(self._scales) if len(self._scales) > 1 else self._scales[0]
            self._scales = [scales]
        train = train.float()
        step = max(1, self.chunk_bytes // (4 * rows.shape[1]))
        out = []
        for start in range(0, rows.shape[0], step):
            block = rows[start : start + step].to(train.device)
            if self.compression == "int8":
                scale = self._scales[0][start : start + step].to(train.device)
                block = dequantize_int8(block, scale, self.group_sizes)
            out.append(block @ train.T)
        return torch.cat(out)

    def split(self, dots: torch.Tensor) -> dict[tuple[str, str], torch.Tensor]:
        """Split the output of :meth:`dot` (``[n_rows, B]``) into ``{key: [n_damping, n_query, B]}``."""
        return {k: dots[s : s + nd * nq].reshape(nd, nq, -1) for k, (s, nd, nq) in self.blocks.items()}


def influence_scores(
    curvature: Curvature,
    query_grads: torch.Tensor,
    train_grads: torch.Tensor,
    dampings: Sequence[float],
    compression: str = "none",
) -> torch.Tensor:
    """τ = ∇m ᵀ (G + λI)⁻¹ ∇ℓ_j for every λ, query and training example: ``[n_damping, n_query, n_train]``."""
    bank = QueryBank(compression, curvature.sizes)
    bank.add(("m", "q"), curvature.precondition(query_grads, dampings))
    return bank.split(bank.dot(train_grads))[("m", "q")]


def query_specs(measurements: Iterable[str], timesteps: Sequence[int]) -> list[tuple[str, str, int | None]]:
    """(score name, measurement, paper timestep) of each query set; ``timestep_loss`` expands to one per step."""
    specs: list[tuple[str, str, int | None]] = []
    for m in measurements:
        if m == "timestep_loss":
            specs.extend((f"timestep_loss_t{t}", m, int(t)) for t in timesteps)
        else:
            specs.append((m, m, None))
    return specs


def stream_scores(
    bank: QueryBank,
    grad_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int,
    progress: bool = True,
    block_bytes: int = 256 * 2**20,
) -> dict[tuple[str, str], np.ndarray]:
    """Phase 2: compute each training gradient once (``grad_fn(images[idx], idx)``) and score every bank row.

    Gradients are held until ``block_bytes`` of them (or the last batch) are ready, then scored in one pass.

    Returns:
        ``{key: [n_damping, n_query, n_train]}`` float32.
    """
    n = images.shape[0]
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
        pending.append(grad_fn(images[idx], idx))
        if sum(p.numel() * p.element_size() for p in pending) >= block_bytes:
            flush()
    if pending:
        flush()
    return out


def compute_kfac_scores(
    config: Mapping[str, Any],
    model_dir: str | Path,
    train_path: str | Path,
    samples_path: str | Path,
    curvature_paths: Sequence[str | Path],
    out_dir: str | Path,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, float]:
    """Stage ``compute_kfac_scores``: every configured variant × measurement, training gradients computed once.

    Writes ``out_dir/{method}/{measurement}.h5`` (see :mod:`diffattr.scores.io`) and returns the wall-time
    breakdown in seconds (``query_gradients``, ``precondition``, ``train_gradients_and_scoring``).
    """
    icfg = config["influence"]
    seeds = gradient_seeds(icfg)
    inputs = AttributionInputs.load(config, model_dir, train_path, samples_path, device)
    wrapper, schedule, images, samples, traj = (
        inputs.wrapper, inputs.schedule, inputs.images, inputs.samples, inputs.trajectories)
    curvatures = {}
    for p in curvature_paths:
        c = load_curvature(p)
        curvatures[c.variant.name] = c
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    queries = {}
    for name, measurement, step in query_specs(icfg["measurements"], config["measure"]["timesteps"]):
        queries[name] = measurement_gradients(
            wrapper, samples, measurement, schedule, icfg["gradient_mc_samples"], seeds["query"], step, traj,
            batch_size=icfg["batch_size"],
        )
        log.info("query gradients %s: %s", name, tuple(queries[name].shape))
    timings["query_gradients"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sizes = next(iter(curvatures.values())).sizes  # every variant covers the same parameters
    bank = QueryBank(icfg["query_compression"], sizes)
    for method, curv in curvatures.items():
        for name, q in queries.items():
            bank.add((method, name), curv.precondition(q, icfg["dampings"]))
    timings["precondition"] = time.perf_counter() - t0
    log.info("query bank: %d rows, %.1f MB (%s)", bank.n_rows, bank.nbytes() / 1e6, icfg["query_compression"])

    t0 = time.perf_counter()
    hflip = bool(config["train"]["hflip"])

    def grad_fn(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return training_gradients(wrapper, x, idx, schedule, icfg["gradient_mc_samples"], seeds["train"], hflip)

    scores = stream_scores(bank, grad_fn, images, icfg["batch_size"], progress)
    timings["train_gradients_and_scoring"] = time.perf_counter() - t0

    out_dir = Path(out_dir)
    for (method, name), values in scores.items():
        write_scores(
            out_dir / method / f"{name}.h5",
            values,
            icfg["dampings"],
            method,
            name,
            icfg["default_damping"],
            config={"influence": dict(icfg), "diffusion": dict(config["diffusion"])},
            attrs={"curvature": curvatures[method].args, "query_compression": icfg["query_compression"],
                   "gradient_mc_samples": icfg["gradient_mc_samples"], "seeds": seeds, "timings": timings},
        )
    log.info("timings: %s", {k: round(v, 2) for k, v in timings.items()})
    return timings

