"""Figures about the measurements themselves, before any attribution (paper appendix E).

- :func:`retraining_matrix` — how well the actual change of one timestep loss predicts another's over the
  retrained models (Figs. 12 and 14, the retraining counterpart of Figs. 11 and 13).
- :func:`elbo_pairs` — the ELBO of the generated samples under pairs of independently trained models (Fig. 17).
- :func:`elbo_weighting` — the ELBO's weight on each timestep's squared error relative to the training loss's
  (Fig. 18).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

from diffattr.plots.figures import matrix, plt, save_figure, write_csv


def retraining_matrix(grid: np.ndarray, steps: Sequence[int], png: str | Path, csv_path: str | Path, title: str) -> None:
    """Figs. 12 / 14: ``grid[a, b]`` = rank correlation (%) of the actual change of ℓ_{steps[a]} with that of
    ℓ_{steps[b]} over the retrained models (:func:`diffattr.evaluate.retraining_correlation`)."""
    matrix(grid, steps, png, csv_path, title=title, row_label="actual change of loss at timestep",
           col_label="target: loss at timestep", header=["from_timestep", "target_timestep", "correlation"])


def elbo_pairs(values: np.ndarray, model_ids: Sequence[str], png: str | Path, csv_path: str | Path) -> None:
    """Fig. 17: ELBO of every sample under model a (x) against model b (y), for every pair of ``model_ids``, with
    the Pearson r and Spearman ρ of each pair.

    Args:
        values: ``[n_models, S]`` ELBO (nats/dim) of each sample under each model.
        model_ids: ``n_models`` names (``full``, ``subset3_seed0``, …).
    """
    n = len(model_ids)
    fig, axes = plt.subplots(n - 1, n - 1, figsize=(2.4 * (n - 1) + 0.5, 2.4 * (n - 1) + 0.5), squeeze=False)
    rows = []
    for a in range(n - 1):
        for b in range(n - 1):
            ax = axes[b, a]
            j = b + 1
            if j <= a:
                ax.axis("off")
                continue
            x, y = values[a], values[j]
            r, rho = pearsonr(x, y).statistic, spearmanr(x, y).statistic
            ax.scatter(x, y, s=5, alpha=0.7)
            ax.set_title(f"r={r:.3f}  ρ={rho:.3f}", fontsize=7)
            ax.tick_params(labelsize=6)
            if b == n - 2:
                ax.set_xlabel(model_ids[a], fontsize=7)
            if a == 0:
                ax.set_ylabel(model_ids[j], fontsize=7)
            rows.extend((model_ids[a], model_ids[j], s, x[s], y[s], r, rho) for s in range(values.shape[1]))
    fig.suptitle(f"ELBO (nats/dim) of {values.shape[1]} generated samples under pairs of independently trained models",
                 fontsize=8)
    save_figure(fig, png)
    write_csv(csv_path, ["model_a", "model_b", "sample", "elbo_a", "elbo_b", "pearson", "spearman"], rows)


def elbo_weighting(weights: np.ndarray, png: str | Path, csv_path: str | Path) -> None:
    """Fig. 18: the ELBO's weight on ||ε - ε_θ||² at each step relative to the training loss's uniform weight.

    Args:
        weights: ``[T]`` from :meth:`diffattr.diffusion.Schedule.elbo_weights` (index 0, the decoder, NaN).
    """
    steps = np.arange(1, len(weights) + 1)  # paper steps
    relative = weights / np.nanmean(weights)
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    ax.plot(steps[1:], relative[1:], label="ELBO")
    ax.axhline(1.0, color="black", ls="--", lw=0.8, label="training loss")
    ax.set_yscale("log")
    ax.set_xlabel("diffusion timestep t")
    ax.set_ylabel("weight relative to the mean")
    ax.set_title("Weight of each timestep's loss ℓ_t: ELBO vs training loss", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, png)
    write_csv(csv_path, ["timestep", "elbo_weight", "relative_weight"],
              [(int(t), float(w), float(r)) for t, w, r in zip(steps, weights, relative, strict=True)])
