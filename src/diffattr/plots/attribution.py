"""The picture of one attribution (a query beside its top proponents and opponents) and the HTML page of a run."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffattr.io import atomic_path
from diffattr.plots.figures import plt, save_figure


def _show(ax, image: np.ndarray) -> None:
    ax.imshow(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), cmap="gray" if image.shape[0] == 1 else None,
              vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])


def attribution_panel(
    query: np.ndarray,
    train_images: np.ndarray,
    proponents: Sequence[int],
    opponents: Sequence[int],
    scores: np.ndarray,
    png: str | Path,
    title: str = "",
) -> None:
    """Two rows: the query, then its top proponents (top) and opponents (bottom), each titled with its training
    index and score.

    Args:
        query: uint8 ``[C, H, W]``.
        train_images: uint8 ``[N, C, H, W]``.
        proponents, opponents: Training indices, most influential first.
        scores: ``[N]`` scores of this query.
    """
    k = max(len(proponents), len(opponents), 1)
    fig, axes = plt.subplots(2, k + 1, figsize=(1.1 * (k + 1) + 0.5, 2.9), squeeze=False)
    _show(axes[0, 0], query)
    axes[0, 0].set_title("query", fontsize=7)
    axes[1, 0].axis("off")
    for row, (kind, idx) in enumerate((("proponents", proponents), ("opponents", opponents))):
        for c in range(k):
            ax = axes[row, 1 + c]
            if c < len(idx):
                _show(ax, train_images[idx[c]])
                ax.set_title(f"#{idx[c]}\n{scores[idx[c]]:.3g}", fontsize=6)
                if c == 0:
                    ax.set_ylabel(kind, fontsize=7)
            else:
                ax.axis("off")
    fig.suptitle(title, fontsize=8)
    save_figure(fig, png)


def index_html(path: str | Path, title: str, summary: Mapping[str, Any], pictures: Sequence[str],
               table_rows: Sequence[Sequence[Any]]) -> None:
    """A self-contained page: the arguments, each query's picture and the top of the score table."""
    args = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in summary.items())
    imgs = "".join(f'<figure><img src="{html.escape(p)}" alt="{html.escape(p)}"><figcaption>{html.escape(p)}'
                   "</figcaption></figure>" for p in pictures)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in table_rows)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;
padding:2px 6px;font-size:12px;text-align:left}} img{{max-width:100%}} figure{{margin:1em 0}}</style></head>
<body><h1>{html.escape(title)}</h1><table>{args}</table>{imgs}
<h2>Top of scores.csv</h2><table><tr><th>query</th><th>kind</th><th>rank</th><th>train index</th><th>file</th>
<th>score</th></tr>{rows}</table></body></html>
"""
    with atomic_path(path) as tmp:
        tmp.write_text(page)
