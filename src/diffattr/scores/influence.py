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
    blocks: dict[tuple, tuple[int, int, int]] = field(default_factory=dict)  # -> (start, n_damp, n_query)
    _rows: list[torch.Tensor] = field(default_factory=list)
    _scales: list[torch.Tensor] = field(default_factory=list)
    _n_rows: int = 0

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")

    def add(self, key: tuple, preconditioned: torch.Tensor) -> None:
        """Add a block ``[n_damping, n_query, P]`` under ``key`` (e.g. (method, measurement))."""
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

    def split(self, dots: torch.Tensor) -> dict[tuple, torch.Tensor]:
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
) -> dict[tuple, np.ndarray]:
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


def plan_passes(n_specs: int, n_samples: int, bytes_per_sample: int, budget: int) -> list[list[tuple[int, int, int]]]:
    """Split the query bank into passes over the training set that each fit ``budget`` bytes.

    A bank row group is one (query set, sample): ``bytes_per_sample`` covers all its variants and dampings.

    Returns:
        Per pass, ``(spec index, first sample, end sample)`` ranges, in order; one pass when everything fits.
    """
    per_pass = max(1, budget // max(1, bytes_per_sample))
    flat = [(k, i) for k in range(n_specs) for i in range(n_samples)]
    passes = []
    for start in range(0, len(flat), per_pass):
        units: list[tuple[int, int, int]] = []
        for k, i in flat[start : start + per_pass]:
            if units and units[-1][0] == k and units[-1][2] == i:
                units[-1] = (k, units[-1][1], i + 1)
            else:
                units.append((k, i, i + 1))
        passes.append(units)
    return passes


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

    Training gradients are computed once per pass over the training set; there is one pass unless the query
    bank exceeds ``influence.bank_memory_mb`` (see :func:`plan_passes`). Writes
    ``out_dir/{method}/{measurement}.h5`` (see :mod:`diffattr.scores.io`) and returns the wall-time breakdown in
    seconds (``query_gradients``, ``precondition``, ``train_gradients_and_scoring``) and the number of passes.
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
    dampings, mc, bs = icfg["dampings"], icfg["gradient_mc_samples"], icfg["batch_size"]
    sizes = next(iter(curvatures.values())).sizes  # every variant covers the same parameters
    specs = query_specs(icfg["measurements"], config["measure"]["timesteps"])
    n_samples, n_train = samples.shape[0], images.shape[0]
    row_bytes = sum(sizes) * (1 if icfg["query_compression"] == "int8" else 4)
    per_sample = len(curvatures) * len(dampings) * row_bytes
    passes = plan_passes(len(specs), n_samples, per_sample, icfg["bank_memory_mb"] * 2**20)
    if len(passes) > 1:
        log.warning(
            "the query bank needs %.1f GB, more than influence.bank_memory_mb = %d MB: scoring in %d passes over "
            "the training set, each recomputing the training gradients",
            len(specs) * n_samples * per_sample / 1e9, icfg["bank_memory_mb"], len(passes),
        )
    hflip = bool(config["train"]["hflip"])

    def grad_fn(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return training_gradients(wrapper, x, idx, schedule, mc, seeds["train"], hflip)

    scores = {(m, name): np.zeros((len(dampings), n_samples, n_train), dtype=np.float32)
              for m in curvatures for name, _, _ in specs}
    timings = {"query_gradients": 0.0, "precondition": 0.0, "train_gradients_and_scoring": 0.0}
    for k, units in enumerate(passes):
        bank = QueryBank(icfg["query_compression"], sizes)
        for spec, s0, s1 in units:
            name, measurement, step = specs[spec]
            t0 = time.perf_counter()
            q = measurement_gradients(wrapper, samples[s0:s1], measurement, schedule, mc, seeds["query"], step,
                                      None if traj is None else traj[s0:s1], batch_size=bs, first_index=s0)
            timings["query_gradients"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            for method, curv in curvatures.items():
                bank.add((method, name, s0), curv.precondition(q, dampings))
            timings["precondition"] += time.perf_counter() - t0
        log.info("pass %d/%d: query bank of %d rows, %.1f MB (%s)", k + 1, len(passes), bank.n_rows,
                 bank.nbytes() / 1e6, icfg["query_compression"])
        t0 = time.perf_counter()
        for (method, name, s0), values in stream_scores(bank, grad_fn, images, bs, progress).items():
            scores[(method, name)][:, s0 : s0 + values.shape[1]] = values
        timings["train_gradients_and_scoring"] += time.perf_counter() - t0

    out_dir = Path(out_dir)
    for (method, name), values in scores.items():
        write_scores(
            out_dir / method / f"{name}.h5",
            values,
            dampings,
            method,
            name,
            icfg["default_damping"],
            predicts=name,
            config={"influence": dict(icfg), "diffusion": dict(config["diffusion"])},
            attrs={"curvature": curvatures[method].args, "query_compression": icfg["query_compression"],
                   "gradient_mc_samples": mc, "seeds": seeds, "timings": timings, "bank_passes": len(passes)},
        )
    log.info("timings: %s (%d passes)", {k: round(v, 2) for k, v in timings.items()}, len(passes))
    return {**timings, "passes": float(len(passes))}
