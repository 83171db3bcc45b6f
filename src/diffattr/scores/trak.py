"""TRAK and D-TRAK for diffusion models (Georgiev et al., 2023; Zheng et al., 2024), paper §4 and app. G.3/G.4.

Features: per-example gradients (the K-FAC path's gradients: same MC draws) projected with the ``traker``
package's Johnson–Lindenstrauss projectors and scaled by 1/√k, so that inner products are preserved in
expectation: φ = Pᵀ∇/√k, ``Φ`` ``[N, k]``.

Scores: τ_j = φ(x)ᵀ (ΦᵀΦ/N + λI)⁻¹ φ(x_j). ΦᵀΦ/N is the projected empirical Fisher of the **data-set mean**
loss (paper eq. 11), so λ is on the same scale as K-FAC's damping; :mod:`diffattr.scores.io` says how it maps
onto the dampings of TRAK's own code and of the paper's figures. One float64 eigendecomposition of ΦᵀΦ/N serves
every λ.

D-TRAK: the same with the square-norm output ||ε_θ(x_t, t)||² in place of the loss, for the training and the
query gradients.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from trak.projectors import BasicProjector, ProjectionType

from diffattr.curvature import kfac_parameters
from diffattr.gradients import measurement_gradients, training_gradients
from diffattr.scores.influence import query_specs
from diffattr.scores.inputs import AttributionInputs, gradient_seeds
from diffattr.scores.io import write_scores

log = logging.getLogger(__name__)

METHODS = {"trak": "loss", "dtrak": "square_norm"}  # method -> gradient output


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
    return BasicProjector(grad_dim, proj_dim, seed, ProjectionType.rademacher, device, block_size=block)


def project(projector, grads: torch.Tensor) -> torch.Tensor:
    """``[B, P]`` -> ``[B, k]`` features, scaled by 1/√k (inner products preserved in expectation)."""
    return projector.project(grads.float().contiguous(), model_id=0) / math.sqrt(projector.proj_dim)


def trak_scores(query: torch.Tensor, train: torch.Tensor, dampings: Sequence[float]) -> torch.Tensor:
    """φ_qᵀ (ΦᵀΦ/N + λI)⁻¹ φ_j for every λ, from one eigendecomposition: ``[n_damping, n_query, N]``.

    Args:
        query: Query features ``[n_query, k]``.
        train: Training features Φ ``[N, k]``.
        dampings: λ on the scale of the data-set-mean GGN.
    """
    n = train.shape[0]
    phi = train.double()
    evals, evecs = torch.linalg.eigh(phi.T @ phi / n)
    evals = evals.clamp(min=0)
    q_rot, t_rot = query.double() @ evecs, phi @ evecs
    return torch.stack([((q_rot / (evals + lam)) @ t_rot.T).float() for lam in dampings])


def compute_trak_scores(
    config: Mapping[str, Any],
    method: str,
    model_dir: str | Path,
    train_path: str | Path,
    samples_path: str | Path,
    out_dir: str | Path,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, float]:
    """Stage ``compute_trak_scores`` / ``compute_dtrak_scores``: write ``out_dir/{method}/{measurement}.h5``.

    The query gradients are those of each configured influence measurement (TRAK) or, for D-TRAK, of the
    square-norm output for every measurement (Zheng et al.'s substitution). Returns the wall-time breakdown.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    output = METHODS[method]
    tcfg, icfg = config["trak"], config["influence"]
    seeds = gradient_seeds(icfg)  # the K-FAC path's draws
    mc = icfg["gradient_mc_samples"]
    inputs = AttributionInputs.load(config, model_dir, train_path, samples_path, device)
    wrapper, schedule, images, samples, traj = (
        inputs.wrapper, inputs.schedule, inputs.images, inputs.samples, inputs.trajectories)
    grad_dim = sum(p.numel() for _, p in kfac_parameters(wrapper))
    projector = make_projector(grad_dim, tcfg["projection_dim"], tcfg["seed"], device)
    hflip = bool(config["train"]["hflip"])
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    n, bs = images.shape[0], max(icfg["batch_size"], TRAK_BLOCK)
    feats = []
    for start in tqdm(range(0, n, bs), desc=f"{method} features", disable=not progress, mininterval=2):
        idx = torch.arange(start, min(start + bs, n))
        grads = torch.cat([
            training_gradients(wrapper, images[i], i, schedule, mc, seeds["train"], hflip, output)
            for i in idx.split(icfg["batch_size"])
        ])
        feats.append(project(projector, grads))
    train_feats = torch.cat(feats)
    timings["train_features"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    written = {}
    for name, measurement, step in query_specs(icfg["measurements"], config["measure"]["timesteps"]):
        if output == "square_norm":
            q = measurement_gradients(wrapper, samples, "loss", schedule, mc, seeds["query"], output=output,
                                      batch_size=icfg["batch_size"])
        else:
            q = measurement_gradients(wrapper, samples, measurement, schedule, mc, seeds["query"], step, traj,
                                      batch_size=icfg["batch_size"])
        written[name] = trak_scores(project(projector, q), train_feats, tcfg["dampings"]).cpu().numpy()
    timings["query_features_and_scores"] = time.perf_counter() - t0
    for name, scores in written.items():
        write_scores(
            Path(out_dir) / method / f"{name}.h5", scores, tcfg["dampings"], method, name, tcfg["default_damping"],
            predicts="square_norm" if output == "square_norm" else name, config={"trak": dict(tcfg), "influence": dict(icfg)},
            attrs={"projection_dim": tcfg["projection_dim"], "projector": type(projector).__name__,
                   "gradient_output": output, "gradient_mc_samples": mc, "seeds": seeds, "timings": timings},
        )
    log.info("%s timings: %s", method, {k: round(v, 2) for k, v in timings.items()})
    return timings
