"""Does a cheaper oracle change the science? Re-measure a finished study's models at another ``measure.precision``
(and ``measure.compile``), or with fewer Monte-Carlo draws (``--set mc_samples=128``), and compare the oracles and
every LDS with the study's own.

    python bench/oracle_settings.py --study results/quickstart --precision bf16 [--compile aot_eager]
    python bench/oracle_settings.py --set mc_samples=128 --set timestep_mc_samples=24
    python bench/oracle_settings.py --study results/cifar2-mini --configfile experiments/cifar2-mini.yaml

The re-measurement and both LDS tables go through the pipeline's own stages (``measure_model``,
``gather_measurements``, ``compute_lds``) in a temporary folder: the study is not touched. The study's stored
oracles are the reference; the first model is re-measured at the study's own setting first, to show that the stored
numbers are reproduced (so every difference below is the setting's). Prints the oracles' relative change, the
Spearman correlation of the model-to-model differences the LDS reads (per sample, across the fleet), every
(method, scores->target) LDS at the best damping under both, the largest change and the timings.

``--trajectories N``: also N new trajectories sampled from the full model, whose trajectory log-probability (the
oracle of paper Fig. 19, which studies without stored trajectories do not measure) is computed under every model
at both settings: its relative change and the Spearman correlation of its model-to-model differences.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import yaml
from scipy.stats import spearmanr

from diffattr.config import deep_merge, load_config, model_measurements
from diffattr.diffusion import Schedule
from diffattr.diffusion.ddpm import eps_fn, sample
from diffattr.io import read_h5
from diffattr.measure import measure_samples, read_measurements
from diffattr.models import load_model
from diffattr.runtime import select_device
from diffattr.stages.evaluate import compute_lds
from diffattr.stages.measure import gather_measurements, measure_model

MODEL_FILES = ("config.json", "diffusion_pytorch_model.safetensors", "train_info.json")


def remeasure(study: Path, cfg: dict, model_ids: list[str], measure: dict, out: Path, device: str) -> list[Path]:
    files = []
    for model_id in model_ids:
        files.append(out / f"{model_id}.h5")
        measure_model(SimpleNamespace(samples=str(study / "samples/samples.h5"),
                                      model=[str(study / "models" / model_id / f) for f in MODEL_FILES]),
                      SimpleNamespace(measurements=str(files[-1])), model_id=model_id,
                      measure={**measure, "measurements": model_measurements(cfg, model_id)},
                      diffusion=cfg["diffusion"], device=device)
    return files


def lds_table(study: Path, cfg: dict, measurements: Path, out: Path) -> dict:
    scores = sorted(str(p) for p in (study / "scores").glob("*/*.h5"))
    compute_lds(SimpleNamespace(measurements=str(measurements), subsets=str(study / "data/subsets.h5"), scores=scores),
                SimpleNamespace(lds=str(out / "lds.json"), per_sample=str(out / "lds_per_sample.csv")),
                experiment=cfg["experiment"], evaluate=cfg["evaluate"], timesteps=cfg["measure"]["timesteps"])
    return json.loads((out / "lds.json").read_text())


def compare(name: str, a: np.ndarray, b: np.ndarray) -> None:
    """One oracle at both settings, ``[models, samples, ...]``: the largest relative change, and the Spearman
    correlation over models of the differences from the fleet mean, per sample (and timestep)."""
    a, b = a.reshape(*a.shape[:2], -1), b.reshape(*b.shape[:2], -1)
    rel = np.abs(b / a - 1).max()
    rho = [spearmanr(a[:, i, k] - a[:, i, k].mean(), b[:, i, k] - b[:, i, k].mean()).statistic
           for i in range(a.shape[1]) for k in range(a.shape[2])]
    print(f"{name:13s} {rel:18.2e}   {np.median(rho):.4f} (min {np.min(rho):.4f})", flush=True)


def trajectory_check(study: Path, cfg: dict, ids: list[str], n: int, cheap: dict, device: str) -> None:
    schedule = Schedule.from_config(cfg["diffusion"])
    full = load_model(study / "models" / ("full" if "full" in ids else ids[0]), device)
    c, size = full.config.in_channels, full.config.sample_size
    gen = torch.Generator().manual_seed(12345)
    x0, _, traj = sample(eps_fn(full), schedule, (n, c, size, size), gen, device, store_trajectory=True,
                         progress=False, clip_x0=cfg["sample"]["clip_x0"])
    values = {}
    for key, measure in (("reference", cfg["measure"]), ("checked", cheap)):
        measure = {**measure, "measurements": ["trajectory"]}
        values[key] = np.stack([measure_samples(load_model(study / "models" / m, device), schedule, x0, measure,
                                                traj, device, progress=False)["trajectory"] for m in ids])
    compare("trajectory", values["reference"], values["checked"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", type=Path, default=Path("results/quickstart"))
    ap.add_argument("--configfile", nargs="*", default=[], help="the study's experiment (and overlays), as Snakemake")
    ap.add_argument("--precision", default=None, choices=["fp32", "tf32", "bf16"], help="default: the study's")
    ap.add_argument("--compile", default=None, help="measure.compile: false, true, reduce-overhead (CUDA graphs) "
                    "or a backend (aot_eager); default: the study's")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="another measure setting (YAML value), e.g. mc_samples=128; repeatable")
    ap.add_argument("--trajectories", type=int, default=0, help="also this many sampled trajectories (see above)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    merged: dict = {}
    for f in args.configfile:
        merged = deep_merge(merged, yaml.safe_load(Path(f).read_text()) or {})
    cfg = load_config("config.yaml", merged)
    device = select_device(cfg["device"])
    stored = read_measurements(args.study / "measurements/measurements.h5")
    ids = [str(m) for m in stored["model_id"]]
    cheap = dict(cfg["measure"])
    if args.precision is not None:
        cheap["precision"] = args.precision
    if args.compile is not None:
        cheap["compile"] = {"false": False, "true": True}.get(args.compile, args.compile)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in cheap:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE with KEY one of measure's keys {sorted(cheap)}")
        cheap[key] = yaml.safe_load(value)
    changed = {k: (cfg["measure"][k], v) for k, v in cheap.items() if v != cfg["measure"][k]}
    if not changed:
        raise SystemExit("nothing to check: give --precision, --compile or --set with a value other than the study's")
    print(f"{args.study}: {len(ids)} models, {stored['loss'].shape[1]} samples, on {device}; checked against the "
          "study's own: " + ", ".join(f"measure.{k} {a} -> {b}" for k, (a, b) in changed.items()), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "ref").mkdir(), (tmp / "cheap").mkdir()
        t0 = time.perf_counter()
        again = read_h5(remeasure(args.study, cfg, ids[:1], cfg["measure"], tmp / "ref", device)[0])
        t_ref = time.perf_counter() - t0
        for name in model_measurements(cfg, ids[0]):
            if not np.array_equal(again[name], stored[name][0]):
                raise SystemExit(f"{ids[0]}: re-measuring {name} at the study's own setting does not reproduce "
                                 f"{args.study}/measurements/measurements.h5 (other code or settings?)")
        t0 = time.perf_counter()
        files = remeasure(args.study, cfg, ids, cheap, tmp / "cheap", device)
        t_cheap = (time.perf_counter() - t0) / len(ids)
        gather_measurements(SimpleNamespace(measurements=[str(f) for f in files]),
                            SimpleNamespace(measurements=str(tmp / "cheap/measurements.h5")),
                            timesteps=cfg["measure"]["timesteps"])
        cheap_meas = read_measurements(tmp / "cheap/measurements.h5")
        print(f"time per model: {t_ref:.1f} s at the reference setting, {t_cheap:.1f} s checked "
              f"({t_cheap / t_ref:.2f}x)")
        print("\noracle        max |rel. change|   Spearman of model-to-model differences (median over samples)")
        for name in model_measurements(cfg, ids[0]):
            compare(name, stored[name], cheap_meas[name])
        if args.trajectories:
            trajectory_check(args.study, cfg, ids, args.trajectories, cheap, device)

        ref_lds = lds_table(args.study, cfg, args.study / "measurements/measurements.h5", tmp / "ref")
        cheap_lds = lds_table(args.study, cfg, tmp / "cheap/measurements.h5", tmp / "cheap")

    print("\nLDS (%) at the best damping: reference -> checked")
    deltas = []
    for method, pairs in ref_lds["table"].items():
        for pair, v in pairs.items():
            a, b = v["best"], cheap_lds["table"][method][pair]["best"]
            deltas.append(abs(b - a) * 100)
            if "timestep" not in pair or pair.split("->")[0] == pair.split("->")[1]:
                print(f"  {method:24s} {pair:40s} {a * 100:6.2f} -> {b * 100:6.2f}")
    for target, o in ref_lds["oracle"].items():
        print(f"  {'oracle':24s} {target:40s} {o['mean'] * 100:6.2f} -> {cheap_lds['oracle'][target]['mean'] * 100:6.2f}")
    print(f"largest change over all {len(deltas)} (method, pair) LDS: {max(deltas):.3f} points "
          f"(median {np.median(deltas):.3f})")


if __name__ == "__main__":
    main()
