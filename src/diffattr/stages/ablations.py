"""Stages of ``rules/ablations.smk``: the paper's ablations that need scores or models of their own.

- :func:`gradient_mc_ablation` — LDS against damping for several gradient MC counts (Figs. 7/9).
- :func:`compression_ablation` — compressed against uncompressed query gradients (Fig. 6).
- :func:`downweight_ablation` — the timestep LDS and retraining matrices on down-weighted models (Figs. 13/14).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from diffattr.curvature import load_curvature
from diffattr.data import read_subsets
from diffattr.evaluate import (
    actual_by_subset,
    finite,
    lds,
    lds_results,
    retraining_correlation,
    target_values,
)
from diffattr.gradients.compress import quantize_dequantize, svd_compress
from diffattr.io import atomic_path
from diffattr.measure import read_measurements
from diffattr.plots import figures, measurements
from diffattr.queries import TIMESTEP_LOSS, Query, query_names
from diffattr.runtime import select_device
from diffattr.scores.bank import QueryBank, stream_scores
from diffattr.scores.base import GradientArgs, GradientInputs
from diffattr.scores.registry import label
from diffattr.stages import Paths, model_dir

log = logging.getLogger(__name__)


def _write_json(path: str, data: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def _actual(meas: Any, targets: Sequence[str], n_subsets: int) -> dict[str, np.ndarray]:
    return {t: actual_by_subset(target_values(meas, t), meas["subset"], meas["seed_index"], n_subsets) for t in targets}


def gradient_mc_ablation(input: Paths, output: Paths, *, pairs: Sequence[Mapping[str, str]]) -> None:
    """``metrics/gradient_mc.json`` and Figs. 7/9: the first K-FAC variant's LDS at every damping for every gradient
    MC count (``input.scores``: its loss-like score files for each count), one panel per (scores, target) pair."""
    masks = read_subsets(input.subsets)["masks"]
    actual = _actual(read_measurements(input.measurements), sorted({p["target"] for p in pairs}), masks.shape[0])
    results, _ = lds_results(input.scores, pairs, masks, actual)
    for r in results:  # one curve per count: the method name carries it
        r["method"] = f"{r['method'].partition('_grad')[0]}_grad{r['gradient_mc_samples']}"
    results.sort(key=lambda r: (r["scores"], r["target"], r["gradient_mc_samples"]))
    summary = {"counts": sorted({r["gradient_mc_samples"] for r in results}), "results": results}
    _write_json(output.metrics, summary)
    figures.damping_curves(summary, output.figure, output.data)


def compression_ablation(
    input: Paths, output: Paths, *, compression: Mapping[str, Any], influence: Mapping[str, Any],
    diffusion: Mapping[str, Any], hflip: bool, device: str,
) -> None:
    """``metrics/compression.json`` and Fig. 6: the first K-FAC variant's loss scores at the default damping with
    the preconditioned query gradients compressed (rank-r SVD per parameter matrix, b-bit quantisation per parameter
    tensor) against the uncompressed ones: Pearson and Spearman per sample (mean over samples), and the LDS of each.

    All schemes are scored in one pass over the training gradients (one query bank of uncompressed float32 rows).
    """
    device = select_device(device)
    inputs = GradientInputs.load(model_dir(input.model), input.train, input.samples, diffusion, device)
    curv = load_curvature(input.curvature)
    args = GradientArgs.from_sections(influence, hflip)
    lam = float(influence["default_damping"])
    S, N = inputs.samples.shape[0], inputs.images.shape[0]
    grads = torch.cat([inputs.query_gradients(Query("loss"), s, min(s + args.batch_size, S), args)
                       for s in range(0, S, args.batch_size)])
    pre = curv.precondition(grads, [lam])[0].float()  # [S, P]
    P = pre.shape[1]
    schemes: dict[str, tuple[str, int, torch.Tensor, int]] = {"none": ("none", 32, pre, 32 * P)}
    for r in compression["svd_ranks"]:
        rows, bits = svd_compress(pre, curv.param_shapes, int(r))
        schemes[f"svd_r{r}"] = ("svd", int(r), rows, bits)
    for b in compression["quantize_bits"]:
        rows, bits = quantize_dequantize(pre, int(b), curv.sizes)
        schemes[f"int{b}"] = ("quantise", int(b), rows, bits)
    bank = QueryBank("none", None)
    for name, (_, _, rows, _) in schemes.items():
        bank.add((name,), rows[None])
    scores = stream_scores(bank, lambda idx: inputs.training_gradients(idx, args), N, args.batch_size)
    meas = read_measurements(input.measurements)
    masks = read_subsets(input.subsets)["masks"]
    actual = _actual(meas, ["loss"], masks.shape[0])["loss"]
    ref = scores[("none",)][0]
    rows = []
    for name, (kind, parameter, _, bits) in schemes.items():
        got = scores[(name,)][0]
        result = lds(got, masks, actual)
        rows.append({
            "scheme": name, "kind": kind, "parameter": parameter, "bits_per_row": int(bits),
            "ratio": 32 * P / bits,
            "pearson": float(np.mean([pearsonr(g, w).statistic for g, w in zip(got, ref, strict=True)])),
            "spearman": float(np.mean([spearmanr(g, w).statistic for g, w in zip(got, ref, strict=True)])),
            "lds_mean": finite(result.mean), "lds_se": finite(result.se),
        })
        log.info("%s: ratio %.1f, Spearman %.4f, LDS %.3f", name, rows[-1]["ratio"], rows[-1]["spearman"], result.mean)
    _write_json(output.metrics, {"method": curv.variant.name, "damping": lam, "n_params": int(P), "schemes": rows,
                                 "compression": dict(compression)})
    figures.compression_ablation(rows, output.figure, output.data,
                                 title=f"{label(curv.variant.name)}, loss measurement, λ={lam:.0e}")


def downweight_ablation(input: Paths, output: Paths, *, timesteps: Sequence[int], factor: float) -> None:
    """``metrics/downweight.json``, Fig. 13 (the first K-FAC variant's timestep LDS matrix against the
    down-weighted models) and Fig. 14 (the retraining matrix of the down-weighted models).

    Down-weighting the examples outside subset m by ``factor`` is, to first order, ``1 - factor`` times their
    removal, so the removal scores predict it up to a scale that Spearman ignores.
    """
    dw = read_measurements(input.downweight)
    masks = read_subsets(input.subsets)["masks"]
    names = query_names([TIMESTEP_LOSS], timesteps)
    actual = _actual(dw, names, masks.shape[0])
    results, _ = lds_results(input.scores, [{"scores": a, "target": b} for a in names for b in names], masks, actual)
    method = results[0]["method"]
    grid = np.array([[100 * retraining_correlation(actual[a], actual[b]).mean for b in names] for a in names])
    _write_json(output.metrics, {"factor": factor, "n_models": len(dw["model_id"]),
                                 "seeds_per_subset": int(next(iter(actual.values())).shape[1]),
                                 "results": results, "retraining": grid.tolist(), "timesteps": list(timesteps)})
    matrix_csv, retraining_csv = output.data
    figures.timestep_matrix({"results": results}, method, output.matrix, matrix_csv,
                            title=f"{label(method)}: LDS (%) of timestep losses, examples down-weighted x{factor:g}")
    measurements.retraining_matrix(grid, list(timesteps), output.retraining, retraining_csv,
                                   title=f"Down-weighted (x{factor:g}) models: rank correlation (%) of actual "
                                         "timestep-loss changes")
