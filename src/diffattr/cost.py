"""Cost estimate of an experiment before running it: jobs per rule from a Snakemake dry run, GPU-hours per job from
unit costs measured on reference hardware (``cost_reference.json``, written by ``bench/unit_costs.py``).

    python -m diffattr.cost experiments/cifar2.yaml        (or: make estimate EXP=cifar2)
    python -m diffattr.cost experiments/cifar2.yaml experiments/cifar2/headline.yaml   (an overlay, merged in order)
    python -m diffattr.cost --spent results/quickstart     (what a run cost, by rule; or: make spent EXP=quickstart)

The per-job model counts the network evaluations each rule performs (training steps, forward passes, per-example
gradients, K-FAC passes, projections) from the merged config and multiplies them by the measured unit costs; it
ignores data loading, process start-up and file writes, so short jobs are underestimated. It also leaves out the
query bank's dot products: by FLOP count about 6 PFLOP per cifar2 ``compute_kfac_scores`` job (16,000 row-dampings
x 5,000 examples x 2P), a few minutes at an H200's float32 rate, not measured. CPU-only rules are counted but not
costed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffattr.config import (
    attribute_image_count,
    deep_merge,
    gradient_mc_counts,
    kfac_queries,
    load_config,
    model_measurements,
    timestep_draw_counts,
)
from diffattr.curvature import FlatEps, kfac_parameters
from diffattr.evaluate.counterfactual import run_targets
from diffattr.models import build_unet
from diffattr.queries import query_names
from diffattr.scores.bank import bank_row_bytes, plan_passes
from diffattr.scores.influence import EIGEN_GROUP
from diffattr.scores.registry import METHODS, counterfactual_plan
from diffattr.scores.shards import shard_bounds
from diffattr.scores.trak import TRAK_BLOCK

REFERENCE_FILE = Path(__file__).with_name("cost_reference.json")
CIFAR10_PER_CLASS = 5000  # training images per class of CIFAR-10


# What every estimate reads from the unit costs (bench/unit_costs.py writes them in this order, so a run cut short
# lacks the last ones); the optional ones (kfac_rotate_s_per_gradient, forward_s_per_image_at, ...) may be assumed.
REQUIRED_UNITS = ["preset", "train_batch", "train_step_s", "forward_s_per_image", "gradient_s_per_example_draw",
                  "kfac_fit_expand_s_per_example_draw", "kfac_eig_expand_s", "kfac_fit_reduce_s_per_example_draw",
                  "kfac_eig_reduce_s", "project_s_per_gradient", "project_batch", "projection_dim"]


def load_reference(path: str | Path = REFERENCE_FILE) -> dict[str, Any]:
    """Unit costs (``bench/unit_costs.py --json``); refuses a file that lacks some, naming them."""
    ref = json.loads(Path(path).read_text())
    missing = [k for k in REQUIRED_UNITS if k not in ref]
    if missing:
        raise ValueError(f"{path} has no {', '.join(missing)}: bench/unit_costs.py stopped before measuring them "
                         "(run it to the end, or pass a complete file with --reference)")
    return ref


def n_train(cfg: Mapping[str, Any]) -> int | None:
    """Training-set size implied by ``data`` (None when only the data can tell: an image folder without per_class)."""
    data = cfg["data"]
    classes, per_class = data.get("classes"), data.get("per_class")
    if data["source"] == "cifar10_python":
        return (len(classes) if classes else 10) * (per_class or CIFAR10_PER_CLASS)
    if classes and per_class:
        return len(classes) * per_class
    return None


def kfac_parameter_count(preset: str) -> int:
    """Number of parameters K-FAC covers (every Linear/Conv2d layer) in a model preset."""
    return sum(p.numel() for _, p in kfac_parameters(FlatEps(build_unet(preset))))


def kfac_bank(cfg: Mapping[str, Any], n_params: int) -> tuple[float, int]:
    """Size in bytes of the largest query bank of a ``compute_kfac_scores`` job (one range of the samples,
    ``influence.sample_shards``) and the passes over the training set it needs (the scorer's own plan). An
    ``influence.query_bank: eigenbasis`` bank holds one row per (variant, query) for all dampings."""
    icfg = cfg["influence"]
    per_variant = kfac_queries(cfg)
    specs = list(dict.fromkeys(q for qs in per_variant.values() for q in qs))
    eigen = icfg["query_bank"] == "eigenbasis"
    per_query = 1 if eigen else len(icfg["dampings"])  # rows per (variant, query)
    # int8 scales: one per EIGEN_GROUP entries in the eigenbasis (give or take one per tensor), one per tensor
    # otherwise (a few hundred bytes, left out)
    row = per_query * bank_row_bytes(n_params, icfg["query_compression"], n_groups=math.ceil(n_params / EIGEN_GROUP)
                                     if eigen else 0)
    per_sample = [row * sum(q in qs for qs in per_variant.values()) for q in specs]
    s0, s1 = max(shard_bounds(cfg["sample"]["n_samples"], icfg["sample_shards"]), key=lambda b: b[1] - b[0])
    passes = plan_passes(len(specs), s1 - s0, per_sample, icfg["bank_memory_mb"] * 2**20)
    return float((s1 - s0) * sum(per_sample)), len(passes)


def _files(configfiles: str | Path | Sequence[str | Path]) -> list[str]:
    return [str(configfiles)] if isinstance(configfiles, str | Path) else [str(f) for f in configfiles]


def dry_run_jobs(configfiles: str | Path | Sequence[str | Path],
                 snakefile: str | Path = "Snakefile") -> list[tuple[str, dict[str, str]]]:
    """The jobs ``snakemake -n`` would run for ``configfiles`` (merged in order): ``[(rule, wildcards)]``."""
    files = _files(configfiles)
    # `python -m snakemake`, not the script beside the interpreter: wheels installed with --target (the lent GPU
    # machines, bench/gpu_checks.sh) put the script elsewhere
    # --forceall: the whole study, also where part of it has run (an estimate to set beside what a run spent)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--forceall", "--cores", "1", "--snakefile",
                           str(snakefile), "--configfile", *files], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake -n --configfile {' '.join(files)} failed:\n{proc.stderr[-3000:]}")
    jobs: list[tuple[str, dict[str, str]]] = []
    for line in proc.stdout.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            jobs.append((m.group(1), {}))
        elif jobs and line.strip().startswith("wildcards:"):
            pairs = line.split(":", 1)[1].split(",")
            jobs[-1][1].update(p.strip().split("=", 1) for p in pairs if "=" in p)
    return jobs


def precision_key(section: Mapping[str, Any]) -> str:
    """The reference unit cost a ``train`` or ``measure`` section runs at: its precision, ``+compile`` with its
    ``compile`` option (``bf16+compile``). ``compile: reduce-overhead`` (CUDA graphs) is priced as inductor until a
    GPU has measured it: graphs only remove launch overhead, so that price is an upper bound."""
    return section["precision"] + ("+compile" if section.get("compile") else "")


def _keyed_cost(ref: Mapping[str, Any], table: str, key: str, measured: Mapping[str, float]) -> tuple[float, bool]:
    """``key``'s unit cost from ``measured`` or, until measured, from ``ref["assumed"][table]`` (said so in the
    estimate); and whether it was measured."""
    if key in measured:
        return float(measured[key]), True
    if key in ref.get("assumed", {}).get(table, {}):
        return float(ref["assumed"][table][key]), False
    raise ValueError(f"{table}: {key!r} has no reference unit cost (have {sorted(measured)}); measure it with "
                     "bench/unit_costs.py on a GPU")


def train_step_seconds(train: Mapping[str, Any], ref: Mapping[str, Any]) -> tuple[float, bool]:
    """Seconds per training step at the reference batch (``train_step_s``, or assumed until measured)."""
    return _keyed_cost(ref, "train_step_s", precision_key(train), ref["train_step_s"])


def measure_forward_seconds(measure: Mapping[str, Any], ref: Mapping[str, Any]) -> tuple[float, bool]:
    """Seconds per image of an oracle's U-Net forward pass at ``measure.precision``/``measure.compile``:
    ``forward_s_per_image`` for fp32, ``forward_s_per_image_at[key]`` otherwise (or assumed until measured)."""
    return _keyed_cost(ref, "forward_s_per_image_at", precision_key(measure),
                       {"fp32": ref["forward_s_per_image"], **ref.get("forward_s_per_image_at", {})})


def unit_cost(ref: Mapping[str, Any], key: str) -> tuple[float, bool]:
    """A scalar unit cost and whether it was measured (``ref[key]``) or is, until measured, assumed
    (``ref["assumed"][key]``, said so in the estimate)."""
    if key in ref:
        return float(ref[key]), True
    if key in ref.get("assumed", {}):
        return float(ref["assumed"][key]), False
    raise ValueError(f"the reference unit costs have no {key!r}; measure it with bench/unit_costs.py")


def rotation_seconds(cfg: Mapping[str, Any], ref: Mapping[str, Any], n_variants: int) -> float:
    """GPU seconds of rotating every training gradient into ``n_variants`` Kronecker eigenbases once (one pass of
    an ``influence.query_bank: eigenbasis`` scorer); 0 for a per-damping bank."""
    if cfg["influence"]["query_bank"] != "eigenbasis":
        return 0.0
    return (n_train(cfg) or 0) * n_variants * unit_cost(ref, "kfac_rotate_s_per_gradient")[0]


def projection_call_seconds(cfg: Mapping[str, Any], ref: Mapping[str, Any]) -> float:
    """GPU seconds of one projector call: traker's BasicProjector regenerates its matrix per call, so the cost is
    per call (one per block of training gradients and one per query set), linear in k."""
    return ref["project_s_per_gradient"] * ref["project_batch"] * cfg["trak"]["projection_dim"] / ref["projection_dim"]


def timestep_oracle_seconds(cfg: Mapping[str, Any], ref: Mapping[str, Any], model_id: str = "full") -> float:
    """GPU seconds of one model's timestep-loss oracles: samples × the draws of all timesteps
    (``measure.timestep_mc_samples``)."""
    mcfg = cfg["measure"]
    if "timestep_loss" not in model_measurements(cfg, model_id):
        return 0.0
    draws = sum(timestep_draw_counts(mcfg))
    return cfg["sample"]["n_samples"] * draws * measure_forward_seconds(mcfg, ref)[0]


def _measured_models(rule: str, wildcards: Mapping[str, str], cfg: Mapping[str, Any]) -> tuple[str, int]:
    """A model id standing for the models a measurement job measures, and their number."""
    if rule == "measure_subset":
        return f"subset{wildcards['subset']}_seed0", int(cfg["subsets"]["seeds_per_subset"])
    return wildcards.get("model", "full"), 1


def job_seconds(
    rule: str, wildcards: Mapping[str, str], cfg: Mapping[str, Any], ref: Mapping[str, Any], bank_passes: int = 1
) -> float | None:
    """Estimated GPU seconds of one job on the reference hardware; None for CPU-only rules.

    ``bank_passes``: passes of ``compute_kfac_scores`` over the training set (see :func:`kfac_bank`).
    """
    N, S, T = n_train(cfg) or 0, cfg["sample"]["n_samples"], cfg["diffusion"]["num_timesteps"]
    icfg, mcfg, tr = cfg["influence"], cfg["measure"], cfg["train"]
    fwd, grad = ref["forward_s_per_image"], ref["gradient_s_per_example_draw"]
    n_queries = len(query_names(icfg["measurements"], mcfg["timesteps"]))
    query_draws = S * n_queries * gradient_mc_counts(icfg)[0]
    if rule in ("train_model", "train_subset"):  # train_subset: every seed of a subset; downweight runs: all steps
        steps = tr["subset_steps"] * cfg["subsets"]["seeds_per_subset"] if rule == "train_subset" else tr["steps"]
        return steps * train_step_seconds(tr, ref)[0] * tr["batch_size"] / ref["train_batch"]
    if rule == "sample_images":
        return S * T * fwd
    if rule in ("measure_model", "measure_subset"):
        model, n_models = _measured_models(rule, wildcards, cfg)
        names = set(model_measurements(cfg, model))
        per_sample = mcfg["mc_samples"] * bool(names & {"loss", "elbo"}) + T * ("trajectory" in names)
        return n_models * (S * per_sample * measure_forward_seconds(mcfg, ref)[0] +
                           timestep_oracle_seconds(cfg, ref, model))
    if rule == "measure_counterfactuals":  # every run's loss, on the samples its evaluation reads
        plan = {"sample": np.asarray([row["sample"] for row in counterfactual_plan(cfg)])}
        n_measured = sum(len(on) for on in run_targets(plan, S))
        return n_measured * mcfg["mc_samples"] * measure_forward_seconds(mcfg, ref)[0]
    if rule == "fit_curvature":
        name = wildcards["curvature"]
        approx = "expand" if name.endswith("expand") else "reduce"
        s = N * icfg["curvature_mc_samples"] * ref[f"kfac_fit_{approx}_s_per_example_draw"] + ref[f"kfac_eig_{approx}_s"]
        if name.startswith("ekfac"):  # eigenvalue correction: one more gradient pass over the same draws
            s += N * icfg["curvature_mc_samples"] * grad
        return s
    if rule == "compute_kfac_scores":  # one range of the samples: its passes over the data and its queries
        return (bank_passes * N * gradient_mc_counts(icfg)[0] + query_draws / icfg["sample_shards"]) * grad + \
            bank_passes * rotation_seconds(cfg, ref, len(kfac_queries(cfg)))
    if rule == "compute_features":  # one range of the training examples, projected in blocks of TRAK_BLOCK
        n = N / cfg["trak"]["feature_shards"]
        return n * gradient_mc_counts(icfg)[0] * grad + math.ceil(n / max(icfg["batch_size"], TRAK_BLOCK)) * \
            projection_call_seconds(cfg, ref)
    if rule == "compute_kfac_grad_scores":  # the same pass with another gradient count, loss-like queries only
        mc = int(wildcards["mc"])
        n_loss_like = len([q for q in query_names(icfg["measurements"], mcfg["timesteps"]) if "timestep" not in q])
        return (N * mc + S * n_loss_like * mc) * grad + rotation_seconds(cfg, ref, len(kfac_queries(cfg)))
    if rule == "compression_ablation":  # the loss queries and one pass of training gradients (the SVDs are small)
        return (N + S) * gradient_mc_counts(icfg)[0] * grad
    if rule == "attribute_queries":  # one pass of training gradients (K-FAC, the study's curvature) + the queries
        n_q = attribute_image_count(cfg)
        return (N + n_q) * gradient_mc_counts(icfg)[0] * grad + rotation_seconds(cfg, ref, 1) if n_q else 0.0
    if rule == "compute_scores":  # any registered method: priced from its registry entry
        method = METHODS[wildcards["method"]]
        if not method.needs_model:  # a similarity of image embeddings (CLIP)
            return (N + S) * ref.get("clip_forward_s_per_image", fwd)
        train_passes = 0 if method.features else method.gradient_passes  # features: compute_features' jobs
        s = (train_passes * N * gradient_mc_counts(icfg)[0] + query_draws) * grad
        if "trak" in method.sections:  # one projector call per query set
            s += n_queries * projection_call_seconds(cfg, ref)
        return s
    return None


def estimate(configfile: str | Path | Sequence[str | Path], ref: Mapping[str, Any] | None = None,
             snakefile: str | Path = "Snakefile") -> dict[str, Any]:
    """Per-rule job counts and GPU-hours of the experiment ``configfile`` (merged over config.yaml; several files,
    e.g. an experiment and an overlay, are merged in order)."""
    ref = ref or load_reference()
    import yaml

    # as Snakemake does: the experiment files deep-merged over config.yaml, in order
    merged: dict[str, Any] = {}
    for f in _files(configfile):
        merged = deep_merge(merged, yaml.safe_load(Path(f).read_text()) or {})
    cfg = load_config(Path(snakefile).with_name("config.yaml"), merged)
    if cfg["model"]["preset"] != ref["preset"]:
        raise ValueError(f"{' + '.join(_files(configfile))}: model.preset is {cfg['model']['preset']!r}, but the reference unit costs "
                         f"({REFERENCE_FILE.name}) are for {ref['preset']!r}; measure them with "
                         f"`python bench/unit_costs.py --preset {cfg['model']['preset']} --json FILE`")
    if n_train(cfg) is None:
        raise ValueError(f"{' + '.join(_files(configfile))}: the training-set size depends on the data (set data.per_class and data.classes)")
    n_params = kfac_parameter_count(cfg["model"]["preset"])
    bank_bytes, passes = kfac_bank(cfg, n_params)
    eigen = {**cfg, "influence": {**cfg["influence"], "query_bank": "eigenbasis"}}
    rows: dict[str, dict[str, Any]] = defaultdict(lambda: {"jobs": 0, "gpu_hours": 0.0, "gpu": False, "max_job_hours": 0.0})
    timestep_hours = 0.0
    for rule, wildcards in dry_run_jobs(configfile, snakefile):
        if rule == "all":
            continue
        if rule in ("measure_model", "measure_subset"):
            model, n_models = _measured_models(rule, wildcards, cfg)
            timestep_hours += n_models * timestep_oracle_seconds(cfg, ref, model) / 3600
        s = job_seconds(rule, wildcards, cfg, ref, passes)
        row = rows[f"{rule}:{wildcards['method']}" if "method" in wildcards else rule]  # one line per method
        row["jobs"] += 1
        if s is not None:
            row["gpu"] = True
            row["gpu_hours"] += s / 3600
            row["max_job_hours"] = max(row["max_job_hours"], s / 3600)
            # the wall-time limit the rule asks the cluster for (rules/*.smk: config key resources)
            key = {"train_model": "train_runtime", "train_subset": "train_runtime",
                   "measure_model": "measure_runtime", "measure_subset": "measure_runtime",
                   "measure_counterfactuals": "measure_runtime",
                   "compute_kfac_scores": "kfac_scores_runtime"}.get(rule, "gpu_runtime")
            per_seed = rule in ("train_subset", "measure_subset")  # rules/*.smk ask for this much per seed
            row["runtime_limit_hours"] = cfg["resources"][key] / 60 * (cfg["subsets"]["seeds_per_subset"] if per_seed else 1)
            row["runtime_key"] = f"resources.{key}"
    assumed = []
    for table, section, (value, measured) in (
            ("train_step_s", "train", train_step_seconds(cfg["train"], ref)),
            ("forward_s_per_image_at", "measure", measure_forward_seconds(cfg["measure"], ref))):
        if not measured:
            assumed.append(f"{table}[{precision_key(cfg[section])}] = {value}")
    if cfg["influence"]["query_bank"] == "eigenbasis" and not unit_cost(ref, "kfac_rotate_s_per_gradient")[1]:
        assumed.append(f"kfac_rotate_s_per_gradient = {unit_cost(ref, 'kfac_rotate_s_per_gradient')[0]}")
    return {"experiment": cfg["experiment"], "n_train": n_train(cfg), "reference": ref, "rules": dict(rows),
            "assumed_unit_costs": assumed,
            "total_gpu_hours": sum(r["gpu_hours"] for r in rows.values()),
            "timestep_oracles": {"gpu_hours": timestep_hours, "draws_per_timestep":
                                 timestep_draw_counts(cfg["measure"]),
                                 "timesteps": len(cfg["measure"]["timesteps"])
                                 if "timestep_loss" in cfg["measure"]["measurements"] else 0},
            "kfac_bank": {"gigabytes": bank_bytes / 1e9, "passes": passes,
                          "sample_shards": cfg["influence"]["sample_shards"],
                          "bank_memory_mb": cfg["influence"]["bank_memory_mb"],
                          "query_bank": cfg["influence"]["query_bank"],
                          "eigenbasis_gigabytes": kfac_bank(eigen, n_params)[0] / 1e9}}


def draws_text(counts: Sequence[int]) -> str:
    """``48 draws each``, or the per-timestep counts ``8/12/24/48 draws``."""
    return f"{counts[0]} draws each" if len(set(counts)) == 1 else "/".join(map(str, counts)) + " draws"


def format_estimate(est: Mapping[str, Any]) -> str:
    ref = est["reference"]
    lines = [f"experiment {est['experiment']} (N = {est['n_train']} training images)",
             f"reference: {ref['device']}, torch {ref['torch']}, unit costs measured {ref['date']} by bench/unit_costs.py "
             f"(preset {ref['preset']})",
             f"{'rule':<24} {'jobs':>6} {'GPU-h/job':>10} {'GPU-h':>10}"]
    for rule, r in sorted(est["rules"].items(), key=lambda kv: -kv[1]["gpu_hours"]):
        if r["gpu"]:
            lines.append(f"{rule:<24} {r['jobs']:>6} {r['gpu_hours'] / r['jobs']:>10.3f} {r['gpu_hours']:>10.1f}")
        else:
            lines.append(f"{rule:<24} {r['jobs']:>6} {'CPU':>10} {'-':>10}")
    for rule, r in est["rules"].items():
        if r["gpu"] and r["max_job_hours"] > r["runtime_limit_hours"]:
            lines.append(f"warning: a {rule} job is estimated at {r['max_job_hours']:.1f} h, over its requested "
                         f"{r['runtime_key']} of {r['runtime_limit_hours']:.1f} h")
    ts = est["timestep_oracles"]
    if ts["timesteps"]:
        lines.append(f"note: measure_model/measure_subset include {ts['gpu_hours']:.1f} GPU-h of timestep-loss oracles "
                     f"({ts['timesteps']} timesteps x {draws_text(ts['draws_per_timestep'])}, "
                     "measure.timestep_mc_samples)")
    bank = est["kfac_bank"]
    if bank["passes"] > 1:
        lines.append(f"note: a compute_kfac_scores job's query bank needs {bank['gigabytes']:.0f} GB, more than "
                     f"influence.bank_memory_mb = {bank['bank_memory_mb']} MB: each job makes {bank['passes']} passes "
                     f"over the training set; influence.sample_shards = {bank['sample_shards'] * bank['passes']} "
                     "(or more memory) makes it one" + (
                         f", or influence.query_bank: eigenbasis ({bank['eigenbasis_gigabytes']:.0f} GB)"
                         if bank["query_bank"] == "per_damping" else ""))
    for item in est["assumed_unit_costs"]:
        source = ref["assumed"]["source"][item.split("[")[0].split(" ")[0]]
        lines.append(f"note: assumed, not measured by bench/unit_costs.py on a GPU yet: {item} ({source})")
    if est["assumed_unit_costs"]:
        lines.append("note: every other unit cost was measured as stated above; rerun bench/unit_costs.py on a GPU "
                     "to replace the assumed ones")
    gpu_rules = {k: r for k, r in est["rules"].items() if r["gpu"]}
    if gpu_rules:
        name, r = max(gpu_rules.items(), key=lambda kv: kv[1]["max_job_hours"])
        lines.append(f"longest job: {name} at {r['max_job_hours']:.2f} GPU-h")
    lines.append(f"{'total':<24} {sum(r['jobs'] for r in est['rules'].values()):>6} {'':>10} {est['total_gpu_hours']:>10.1f}")
    return "\n".join(lines)


def _benchmark_row(path: Path) -> dict[str, float | None]:
    """Wall and CPU seconds (the mean of its rows, one per repeat) and peak RSS in MB (the largest) of one Snakemake
    ``benchmark:`` file; None where Snakemake could not measure (``NA``)."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or "s" not in rows[0]:
        raise ValueError(f"{path}: not a Snakemake benchmark file (no column 's')")

    def values(column: str) -> list[float]:
        return [float(r[column]) for r in rows if r.get(column) not in (None, "", "NA", "-")]

    s, rss, cpu = values("s"), values("max_rss"), values("cpu_time")
    return {"s": sum(s) / len(s) if s else None, "max_rss": max(rss, default=None),
            "cpu_time": sum(cpu) / len(cpu) if cpu else None}


def spent(results: str | Path) -> dict[str, Any]:
    """What a run cost, job by job: the ``benchmark:`` files Snakemake wrote under ``results/<exp>/benchmarks/``
    (``<rule>.tsv`` or ``<rule>/<wildcards>.tsv``), summed by rule.

    The measured counterpart of :func:`estimate`, for a finished or a partial run. A job's wall seconds include its
    process start and imports, which the estimate leaves out. Within a rule, jobs are also counted by their wildcard
    values with every number replaced by ``#`` (``train_model``: ``full`` x1, ``cf#`` x8), so that kinds of job show.

    Returns:
        ``{"results", "jobs", "seconds", "rules": {rule: {"jobs", "seconds", "max_s", "max_rss_mb", "cpu_s",
        "kinds": {pattern: jobs}}}}``.
    """
    bench = Path(results) / "benchmarks"
    files = sorted(bench.rglob("*.tsv")) if bench.is_dir() else []
    if not files:
        raise ValueError(f"{bench}: no benchmark files (the study has not run there, or its rules wrote none)")
    rules: dict[str, dict[str, Any]] = {}
    for f in files:
        parts = f.relative_to(bench).with_suffix("").parts
        rule, kind = parts[0], re.sub(r"\d+", "#", "/".join(parts[1:])) or "-"
        b = _benchmark_row(f)
        row = rules.setdefault(rule, {"jobs": 0, "seconds": 0.0, "max_s": 0.0, "max_rss_mb": None, "cpu_s": 0.0,
                                      "kinds": {}})
        row["jobs"] += 1
        row["seconds"] += b["s"] or 0.0
        row["max_s"] = max(row["max_s"], b["s"] or 0.0)
        row["cpu_s"] += b["cpu_time"] or 0.0
        if b["max_rss"] is not None:
            row["max_rss_mb"] = max(row["max_rss_mb"] or 0.0, b["max_rss"])
        row["kinds"][kind] = row["kinds"].get(kind, 0) + 1
    return {"results": str(results), "jobs": sum(r["jobs"] for r in rules.values()),
            "seconds": sum(r["seconds"] for r in rules.values()), "rules": rules}


def format_spent(run: Mapping[str, Any], est: Mapping[str, Any] | None = None) -> str:
    """The table of :func:`spent`, largest rule first; with an :func:`estimate` of the same experiment, its
    seconds per rule beside the measured ones (rules the estimate prices but the run did not reach show as 0 jobs)."""
    total = run["seconds"]
    head = (f"{run['results']}: {run['jobs']} jobs, {total:,.0f} job-seconds ({total / 60:.1f} min of one core or GPU "
            "slot; wall seconds of each job, start-up included)")
    cols = f"{'rule':<26} {'jobs':>5} {'seconds':>9} {'share':>6} {'mean s':>7} {'longest s':>9} {'max RSS MB':>10}"
    estimated: dict[str, float] = {}
    if est is not None:
        cols += f" {'estimated s':>11}"
        for key, r in est["rules"].items():
            if r["gpu"]:
                rule = key.split(":")[0]
                estimated[rule] = estimated.get(rule, 0.0) + r["gpu_hours"] * 3600
    lines = [head, cols + "  jobs by wildcards"]
    rows = dict(run["rules"])
    for rule in estimated.keys() - rows.keys():
        rows[rule] = {"jobs": 0, "seconds": 0.0, "max_s": 0.0, "max_rss_mb": None, "kinds": {}}
    for rule, r in sorted(rows.items(), key=lambda kv: -kv[1]["seconds"]):
        rss = f"{r['max_rss_mb']:.0f}" if r["max_rss_mb"] is not None else "-"
        mean = f"{r['seconds'] / r['jobs']:.1f}" if r["jobs"] else "-"
        line = (f"{rule:<26} {r['jobs']:>5} {r['seconds']:>9.1f} {100 * r['seconds'] / total:>5.1f}% {mean:>7} "
                f"{r['max_s']:>9.1f} {rss:>10}")
        if est is not None:
            line += f" {estimated[rule]:>11.1f}" if rule in estimated else f" {'CPU' if rule in est['rules'] else '-':>11}"
        kinds = r["kinds"]  # shown where they tell jobs apart: not for one number per job (train_subset/<m>)
        lines.append(line + ("  " + ", ".join(f"{k} x{n}" for k, n in kinds.items()) if set(kinds) - {"-", "#"} else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configfile", nargs="*", help="experiment config, e.g. experiments/cifar2.yaml, and overlays")
    ap.add_argument("--reference", default=str(REFERENCE_FILE), help="unit costs (bench/unit_costs.py --json)")
    ap.add_argument("--spent", metavar="RESULTS", help="what a run cost, by rule, from its benchmark files, e.g. "
                    "results/quickstart (with configfile: the estimate's seconds beside them)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    if not args.configfile and not args.spent:
        ap.error("give an experiment config to estimate, or --spent RESULTS, or both")
    # a unit-cost file that is incomplete or for another preset, a run without benchmark files: the message says which
    try:
        run = spent(args.spent) if args.spent else None
        est = estimate(args.configfile, load_reference(args.reference)) if args.configfile else None
    except ValueError as err:
        raise SystemExit(f"diffattr.cost: {err}") from None
    if args.json:
        print(json.dumps({"estimate": est, "spent": run} if run and est else run or est, indent=2))
    else:
        print(format_spent(run, est) if run else format_estimate(est))


if __name__ == "__main__":
    main()
