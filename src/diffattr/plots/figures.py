"""The paper's figures from the study's artefacts (PNG, plus the data behind each as CSV).

- :func:`lds_bars` — LDS per method with error bars and the exact-retraining oracle, per target (Figs. 2, 19).
- :func:`damping_curves` — LDS against damping per method (Figs. 7–10, 20: NaN marked ×).
- :func:`hessian_ablation` — K-FAC expand/reduce × MC/empirical Fisher (Fig. 4).
- :func:`top_influences` — most positive / negative / neutral training images per sample (Fig. 1).
- :func:`predicted_vs_actual` — predicted against actual change over the retrained models (Fig. 15; Fig. 16 per
  timestep loss).
- :func:`timestep_matrix` — LDS of timestep-loss targets against the timestep used for the scores (Figs. 11, 13).
- :func:`counterfactual_bars` — change in loss after removing the top influences vs random (Fig. 3).
- :func:`compression_ablation` — compressed against uncompressed query gradients (Fig. 6).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffattr.io import atomic_path  # noqa: E402
from diffattr.queries import parse_query  # noqa: E402
from diffattr.scores.registry import KFAC, label  # noqa: E402


def save_figure(fig: plt.Figure, png: str | Path) -> None:
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _rows(summary: Mapping[str, Any], target: str, families: Sequence[str] | None = None) -> list[dict[str, Any]]:
    out = [r for r in summary["results"] if r["target"] == target]
    if families is not None:
        out = [r for r in out if r["family"] in families]
    return out


def lds_bars(summary: Mapping[str, Any], png: str | Path, csv_path: str | Path) -> None:
    """Fig. 2: best-damping LDS (bars, ± s.e.), default damping (dots), oracle (dashed), one panel per target.

    Of the K-FAC family only the first variant in the results (the first configured one) is shown; the variants
    are compared in :func:`hessian_ablation`.
    """
    targets = sorted({r["target"] for r in summary["results"]})
    kfac = [r["method"] for r in summary["results"] if r["family"] == KFAC][:1]
    fig, axes = plt.subplots(1, len(targets), figsize=(4.8 * len(targets), 3.6), squeeze=False)
    rows = []
    for ax, target in zip(axes[0], targets, strict=True):
        entries = [r for r in _rows(summary, target) if r["family"] != KFAC or r["method"] in kfac]
        entries.sort(key=lambda r: (r["scores"] != target, -(r["best"]["mean"] or -1)))
        names = [label(r["method"]) + ("" if r["scores"] == target else f"\n(m. {r['scores']})") for r in entries]
        best = [100 * (r["best"]["mean"] or 0) for r in entries]
        err = [100 * (r["best"]["se"] or 0) for r in entries]
        colors = ["tab:blue" if r["scores"] == target else "tab:gray" for r in entries]
        x = np.arange(len(entries))
        ax.bar(x, best, yerr=err, color=colors, capsize=3)
        for i, r in enumerate(entries):
            if r["default"] is not None and r["default"]["mean"] is not None:
                ax.plot(i, 100 * r["default"]["mean"], "o", color="black", ms=4)
            rows.append((target, r["method"], r["scores"], r["best"]["damping"], r["best"]["mean"], r["best"]["se"],
                         None if r["default"] is None else r["default"]["mean"]))
        oracle = summary["oracle"].get(target)
        if oracle and oracle["mean"] is not None:
            ax.axhline(100 * oracle["mean"], ls="--", color="tab:red", label=f"exact retraining {100 * oracle['mean']:.1f}")
            ax.legend(loc="upper right", fontsize=8)
            rows.append((target, "oracle", target, None, oracle["mean"], oracle["se"], None))
        ax.set_xticks(x, names, fontsize=8)
        ax.set_ylabel("LDS (%)")
        ax.set_title(f"target: {target}")
        ax.axhline(0, color="black", lw=0.5)
    fig.suptitle(f"{summary['experiment']}: LDS over {summary['n_samples']} samples, "
                 f"M={summary['n_subsets']} subsets x K={summary['seeds_per_subset']} seeds "
                 "(bars: best damping; dots: default damping)", fontsize=9)
    save_figure(fig, png)
    write_csv(csv_path, ["target", "method", "scores", "best_damping", "lds_best", "se_best", "lds_default"], rows)


def damping_curves(summary: Mapping[str, Any], png: str | Path, csv_path: str | Path) -> None:
    """Figs. 7–10: LDS against damping, one panel per (scores -> target) pair."""
    pairs = sorted({(r["scores"], r["target"]) for r in summary["results"]})
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.5 * len(pairs), 3.4), squeeze=False)
    rows = []
    for ax, (scored, target) in zip(axes[0], pairs, strict=True):
        for r in summary["results"]:
            if (r["scores"], r["target"]) != (scored, target):
                continue
            if all(d is None for d in r["dampings"]):  # no damping (CLIP): a horizontal line
                if r["lds_mean"][0] is not None:
                    ax.axhline(100 * r["lds_mean"][0], ls=":", color="grey", label=label(r["method"]))
                continue
            y = np.array([np.nan if v is None else 100 * v for v in r["lds_mean"]])
            e = np.array([np.nan if v is None else 100 * v for v in r["lds_se"]])
            line = ax.errorbar(r["dampings"], y, yerr=e, marker="o", ms=3, capsize=2, label=label(r["method"]))
            nan = np.isnan(y)
            if nan.any():  # NaN LDS (non-finite scores, e.g. float16 at small damping): × on the zero line (Fig. 20)
                ax.plot(np.asarray(r["dampings"], dtype=float)[nan], np.zeros(nan.sum()), "x", ms=8, mew=2,
                        color=line[0].get_color())
            rows.extend((scored, target, r["method"], d, m, s) for d, m, s in zip(r["dampings"], r["lds_mean"], r["lds_se"], strict=True))
        ax.set_xscale("log")
        ax.set_xlabel("damping λ (on the GGN of the mean loss)")
        ax.set_ylabel("LDS (%)")
        ax.set_title(f"{scored} -> {target}", fontsize=9)
        ax.legend(fontsize=7)
    save_figure(fig, png)
    write_csv(csv_path, ["scores", "target", "method", "damping", "lds_mean", "lds_se"], rows)


def hessian_ablation(summary: Mapping[str, Any], png: str | Path, csv_path: str | Path, target: str = "loss") -> None:
    """Fig. 4: the K-FAC variants (expand/reduce x MC/empirical Fisher) on the loss measurement."""
    entries = [r for r in _rows(summary, target, [KFAC]) if r["scores"] == target]
    entries.sort(key=lambda r: r["method"])
    fig, ax = plt.subplots(figsize=(1.3 * max(len(entries), 2) + 1, 3.4))
    x = np.arange(len(entries))
    ax.bar(x, [100 * (r["best"]["mean"] or 0) for r in entries], yerr=[100 * (r["best"]["se"] or 0) for r in entries],
           capsize=3, color="tab:blue")
    for i, r in enumerate(entries):
        if r["default"] is not None and r["default"]["mean"] is not None:
            ax.plot(i, 100 * r["default"]["mean"], "o", color="black", ms=4)
    ax.set_xticks(x, [r["method"].replace("_", "\n", 1).replace("kfac\n", "K-FAC ") for r in entries], fontsize=8)
    ax.set_ylabel(f"LDS (%), target {target}")
    ax.set_title("Hessian approximation ablation", fontsize=9)
    save_figure(fig, png)
    write_csv(csv_path, ["method", "best_damping", "lds_best", "se_best"],
               [(r["method"], r["best"]["damping"], r["best"]["mean"], r["best"]["se"]) for r in entries])


def top_influences(
    scores: np.ndarray,
    samples: np.ndarray,
    train_images: np.ndarray,
    png: str | Path,
    csv_path: str | Path,
    k: int = 6,
    n_samples: int = 4,
    title: str = "",
) -> None:
    """Fig. 1: for each sample, the k most positive, most negative and most neutral (|τ| smallest) training images.

    Args:
        scores: ``[S, N]`` at one damping.
        samples: uint8 ``[S, C, H, W]``.
        train_images: uint8 ``[N, C, H, W]``.
    """
    n_samples = min(n_samples, scores.shape[0])
    kinds = [("positive", lambda s: np.argsort(-s)[:k]), ("negative", lambda s: np.argsort(s)[:k]),
             ("neutral", lambda s: np.argsort(np.abs(s))[:k])]
    fig, axes = plt.subplots(n_samples, 1 + 3 * k, figsize=(0.75 * (1 + 3 * k), 0.85 * n_samples + 0.5), squeeze=False)
    cmap = "gray" if samples.shape[1] == 1 else None
    rows = []

    def show(ax, im):
        ax.imshow(im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0), cmap=cmap, vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])

    for i in range(n_samples):
        show(axes[i, 0], samples[i])
        axes[i, 0].set_ylabel(f"sample {i}", fontsize=7)
        col = 1
        for kind, pick in kinds:
            for rank, j in enumerate(pick(scores[i])):
                show(axes[i, col], train_images[j])
                axes[i, col].set_title(f"{scores[i, j]:.2g}", fontsize=5)
                rows.append((i, kind, rank, int(j), float(scores[i, j])))
                col += 1
    for c, (kind, _) in enumerate(kinds):
        axes[0, 1 + c * k].set_title(f"{kind}\n{axes[0, 1 + c * k].get_title()}", fontsize=6)
    fig.suptitle(title or "generated sample | most positive | most negative | most neutral training images", fontsize=8)
    save_figure(fig, png)
    write_csv(csv_path, ["sample", "kind", "rank", "train_index", "score"], rows)


def predicted_vs_actual(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]], png: str | Path, csv_path: str | Path, title: str = ""
) -> None:
    """Figs. 15 and 16: predicted against actual change of a measurement, one point per (subset, sample), coloured
    by sample; one panel per measurement.

    Args:
        panels: measurement name -> (``predicted`` ``[M, S]`` change when training on each subset, ``actual``
            ``[M, S]`` change: mean over seeds minus the full model's value).
    """
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 0.4, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    rows = []
    for ax, (name, (predicted, actual)) in zip(axes.flat, panels.items(), strict=False):
        m_idx, s_idx = np.meshgrid(np.arange(predicted.shape[0]), np.arange(predicted.shape[1]), indexing="ij")
        ax.scatter(predicted.ravel(), actual.ravel(), c=s_idx.ravel(), cmap="tab20", s=6, alpha=0.7)
        # each axis spans its own data (the two scales can differ by orders of magnitude); y = x where it shows
        lo, hi = min(actual.min(), 0.0), max(actual.max(), 0.0)
        pad = 0.05 * (hi - lo or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
        lim = [min(predicted.min(), actual.min()), max(predicted.max(), actual.max())]
        ax.plot(lim, lim, color="black", lw=0.6, ls="--")
        ax.axhline(0, color="gray", lw=0.5)
        ax.axvline(0, color="gray", lw=0.5)
        ax.set_xlabel("predicted change (influence)")
        ax.set_ylabel("actual change (retrained)")
        ax.set_title(f"{name}\nchanges > 0: {100 * (actual > 0).mean():.0f}% actual, "
                     f"{100 * (predicted > 0).mean():.0f}% predicted", fontsize=7)
        rows.extend((name, m, s, p, a) for m, s, p, a in
                    zip(m_idx.ravel(), s_idx.ravel(), predicted.ravel(), actual.ravel(), strict=True))
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, png)
    write_csv(csv_path, ["measurement", "subset", "sample", "predicted", "actual"], rows)


def counterfactual_bars(summary: Mapping[str, Any], png: str | Path, csv_path: str | Path) -> None:
    """Fig. 3: mean change of the sample's loss after removing each method's top p% (and a random p%)."""
    fractions = sorted(summary["mean_change"], key=float)
    methods = sorted({m for f in fractions for m in summary["mean_change"][f]}, key=lambda m: (m == "random", m))
    fig, ax = plt.subplots(figsize=(1.6 * len(methods) * len(fractions) / 2 + 2, 3.4))
    width = 0.8 / len(methods)
    rows = []
    for k, m in enumerate(methods):
        means = [summary["mean_change"][f].get(m, {}).get("mean", np.nan) for f in fractions]
        ses = [summary["mean_change"][f].get(m, {}).get("se") or 0 for f in fractions]
        ax.bar(np.arange(len(fractions)) + k * width, means, width, yerr=ses, capsize=3, label=label(m),
               color="tab:gray" if m == "random" else None)
        rows.extend((f, m, mu, se) for f, mu, se in zip(fractions, means, ses, strict=True))
    ax.set_xticks(np.arange(len(fractions)) + 0.4 - width / 2, [f"top {100 * float(f):g}% removed" for f in fractions])
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylabel("change in loss on the sample")
    ax.legend(fontsize=7)
    save_figure(fig, png)
    write_csv(csv_path, ["fraction", "method", "mean_change", "se"], rows)


def matrix(
    grid: np.ndarray, steps: Sequence[int], png: str | Path, csv_path: str | Path, *, title: str, row_label: str,
    col_label: str, header: Sequence[str],
) -> None:
    """A timestep x timestep matrix of percentages with its values written in the cells (Figs. 11–14).

    Args:
        grid: ``[len(steps), len(steps)]``, rows ``row_label``, columns ``col_label``; NaN cells stay blank.
        header: CSV column names of (row step, column step, value).
    """
    fig, ax = plt.subplots(figsize=(0.6 * len(steps) + 2, 0.55 * len(steps) + 1.5))
    im = ax.imshow(grid, cmap="viridis")
    for a in range(len(steps)):
        for b in range(len(steps)):
            if np.isfinite(grid[a, b]):
                ax.text(b, a, f"{grid[a, b]:.0f}", ha="center", va="center", fontsize=7, color="white")
    ax.set_xticks(range(len(steps)), steps)
    ax.set_yticks(range(len(steps)), steps)
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    save_figure(fig, png)
    write_csv(csv_path, header, [(steps[a], steps[b], grid[a, b]) for a in range(len(steps)) for b in range(len(steps))])


def timestep_matrix(summary: Mapping[str, Any], method: str, png: str | Path, csv_path: str | Path,
                    title: str = "") -> None:
    """Figs. 11 and 13: best-damping LDS (%) of ``method`` for every (scores timestep, target timestep) pair."""
    entries = [r for r in summary["results"] if r["method"] == method
               and parse_query(r["scores"]).timestep is not None and parse_query(r["target"]).timestep is not None]
    steps = sorted({parse_query(r["scores"]).timestep for r in entries})
    grid = np.full((len(steps), len(steps)), np.nan)
    for r in entries:
        a = steps.index(parse_query(r["scores"]).timestep)
        b = steps.index(parse_query(r["target"]).timestep)
        grid[a, b] = 100 * (r["best"]["mean"] if r["best"]["mean"] is not None else np.nan)
    matrix(grid, steps, png, csv_path, title=title or f"{label(method)}: LDS (%) of timestep losses",
           row_label="scores: loss at timestep", col_label="target: loss at timestep",
           header=["scores_timestep", "target_timestep", "lds_best"])


def compression_ablation(rows: Sequence[Mapping[str, Any]], png: str | Path, csv_path: str | Path, title: str = "") -> None:
    """Fig. 6: correlation of compressed-gradient scores with uncompressed ones, and their LDS, against the
    compression ratio; one line per kind (``svd``, ``quantise``), the uncompressed LDS dashed.

    Args:
        rows: One per scheme: scheme, kind (``none``/``svd``/``quantise``), parameter (rank or bits), ratio,
            pearson, spearman, lds_mean, lds_se (and bits_per_row).
    """
    fig, (ax_c, ax_l) = plt.subplots(1, 2, figsize=(9, 3.5))
    for kind, color in (("svd", "tab:orange"), ("quantise", "tab:blue")):
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["ratio"])
        if not mine:
            continue
        x = [r["ratio"] for r in mine]
        name = "SVD (rank r)" if kind == "svd" else "quantisation (b bits)"
        ax_c.plot(x, [100 * r["pearson"] for r in mine], "o-", color=color, label=f"{name}, Pearson")
        ax_c.plot(x, [100 * r["spearman"] for r in mine], "s--", color=color, label=f"{name}, Spearman")
        ax_l.errorbar(x, [100 * (r["lds_mean"] if r["lds_mean"] is not None else np.nan) for r in mine],
                      yerr=[100 * (r["lds_se"] or 0) for r in mine], marker="o", capsize=2, color=color, label=name)
        for r in mine:
            ax_c.annotate(("r=" if kind == "svd" else "b=") + str(r["parameter"]), (r["ratio"], 100 * r["spearman"]),
                          fontsize=6, textcoords="offset points", xytext=(2, -8))
    ref = next(r for r in rows if r["kind"] == "none")
    if ref["lds_mean"] is not None:
        ax_l.axhline(100 * ref["lds_mean"], ls="--", color="black", lw=0.8, label="uncompressed")
    for ax in (ax_c, ax_l):
        ax.set_xscale("log")
        ax.set_xlabel("compression ratio (float32 bits / stored bits)")
        ax.legend(fontsize=6)
    ax_c.set_ylabel("correlation with uncompressed scores (%)")
    ax_l.set_ylabel("LDS (%)")
    fig.suptitle(title, fontsize=8)
    save_figure(fig, png)
    write_csv(csv_path, ["scheme", "kind", "parameter", "ratio", "pearson", "spearman", "lds_mean", "lds_se"],
              [(r["scheme"], r["kind"], r["parameter"], r["ratio"], r["pearson"], r["spearman"], r["lds_mean"],
                r["lds_se"]) for r in rows])

