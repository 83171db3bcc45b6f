"""Stage ``plot_figures``: every figure of the study from its artefacts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffattr.data import read_subsets, read_train
from diffattr.evaluate.lds import actual_by_subset, predicted_changes
from diffattr.evaluate.study import target_values
from diffattr.measure import read_measurements
from diffattr.plots import figures
from diffattr.sampling import read_samples
from diffattr.scores import read_scores, target_sign

FIGURES = ("lds", "damping", "hessian_ablation", "top_influences", "predicted_vs_actual")  # + timestep_matrix


def make_figures(
    config: Mapping[str, Any],
    lds_json: str | Path,
    train_path: str | Path,
    samples_path: str | Path,
    subsets_path: str | Path,
    measurements_path: str | Path,
    kfac_loss_scores: str | Path,
    out_dir: str | Path,
) -> list[Path]:
    """Write ``out_dir/{figure}.png`` and ``.csv`` for each of :data:`FIGURES` (and ``timestep_matrix`` when
    ``evaluate.timestep_matrix`` is on)."""
    out = Path(out_dir)
    summary = json.loads(Path(lds_json).read_text())
    figures.lds_bars({**summary, "results": [r for r in summary["results"] if "timestep" not in r["target"]]},
                     out / "lds.png", out / "lds.csv")
    figures.damping_curves({**summary, "results": [r for r in summary["results"] if "timestep" not in r["target"]]},
                           out / "damping.png", out / "damping.csv")
    if config["evaluate"]["timestep_matrix"]:
        figures.timestep_matrix(summary, read_scores(kfac_loss_scores).attrs["method"],
                                out / "timestep_matrix.png", out / "timestep_matrix.csv")
    figures.hessian_ablation(summary, out / "hessian_ablation.png", out / "hessian_ablation.csv")

    art = read_scores(kfac_loss_scores)
    d = art.attrs["default_damping"]
    k = int(abs(art["dampings"] - d).argmin())
    scores = target_sign(art, "loss") * art["scores"][k]
    figures.top_influences(
        scores, read_samples(samples_path)["images"], read_train(train_path)["images"],
        out / "top_influences.png", out / "top_influences.csv", k=config["evaluate"]["top_k_images"],
        title=f"{figures.label(art.attrs['method'])} (λ={art['dampings'][k]:.0e}), loss measurement: generated sample | "
              "most positive | most negative | most neutral training images",
    )
    meas = read_measurements(measurements_path)
    sub = read_subsets(subsets_path)
    values = target_values(meas, "loss")
    actual = actual_by_subset(values, meas["subset"], meas["seed_index"], sub["masks"].shape[0]).mean(1)
    full = values[list(meas["model_id"]).index("full")]
    figures.predicted_vs_actual(
        predicted_changes(scores, sub["masks"]), actual - full[None], out / "predicted_vs_actual.png",
        out / "predicted_vs_actual.csv",
        title=f"loss on generated samples, {figures.label(art.attrs['method'])} λ={art['dampings'][k]:.0e}",
    )
    names = [*FIGURES, "timestep_matrix"] if config["evaluate"]["timestep_matrix"] else FIGURES
    return [out / f"{name}.png" for name in names]
