"""The SLURM profile, exercised with the real snakemake and its SLURM executor plugin against stub SLURM commands.

The dry run shows the resources the profile resolves for every job; then the stubs record each `sbatch` call while
`--immediate-submit` makes Snakemake submit jobs without waiting for their inputs, so the recorded calls are the
submissions a real cluster would receive.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from tests.conftest import run_snakemake

GPU_RULES = {"train_model", "train_subset", "sample_images", "measure_model", "measure_subset",
             "measure_counterfactuals", "fit_curvature", "compute_kfac_scores", "compute_scores",
             "compute_kfac_grad_scores", "compression_ablation", "compute_features"}
STUBS = {
    # the plugin calls sbatch concurrently: the job-id counter is incremented under a lock (an unlocked
    # read-increment-write once printed no id under load, which made Snakemake give up submitting)
    "sbatch": 'exec 9>>"$STUB_LOG.lock"; flock 9\n'
              'n=$(( $(cat "$STUB_LOG.count" 2>/dev/null || echo 1000) + 1 )); echo $n > "$STUB_LOG.count"\n'
              'echo "$*" >> "$STUB_LOG"; echo $n',
    "sacct": 'last=$(cat "$STUB_LOG.count" 2>/dev/null || echo 1000)\n'
             'for ((i=1001; i<=last; i++)); do echo "$i|COMPLETED"; done',
    "squeue": "exit 0",
    "sinfo": 'echo "$DIFFATTR_SLURM_PARTITION*"',
    "sacctmgr": 'echo "$DIFFATTR_SLURM_ACCOUNT"',
}


# The first wave of --immediate-submit (GPU and CPU rules both). Later waves (sample_images, fit_curvature, ...)
# come only as Snakemake's scheduler loop turns over, which with status checks put off may take an hour.
ALWAYS_SUBMITTED = {"train_model", "train_subset", "prepare_dataset", "make_subsets"}


def _submissions(log: Path) -> dict[str, list[str]]:
    """sbatch options recorded by the stub so far, by rule (a line still being written is skipped)."""
    calls = defaultdict(list)
    text = log.read_text() if log.exists() else ""
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            continue
        options = line.split(" --wrap=")[0]
        if m := re.search(r"--comment rule_([a-z_]+?)(?:_wildcards_\S+)?(?:\s|$)", options):
            calls[m.group(1)].append(options)
    return calls


def _stub_path(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "stub-bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        exe = bin_dir / name
        exe.write_text(f"#!/usr/bin/env bash\n{body}\n")
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_slurm_profile_requests_gpus_for_exactly_the_gpu_rules(workflow_dir: Path, tmp_path: Path, monkeypatch):
    log = tmp_path / "sbatch.log"
    monkeypatch.setenv("PATH", f"{_stub_path(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STUB_LOG", str(log))
    monkeypatch.setenv("DIFFATTR_SLURM_PARTITION", "gpuq")
    monkeypatch.setenv("DIFFATTR_SLURM_ACCOUNT", "proj42")
    args = ["--profile", "profiles/slurm", "--configfile", "experiments/cifar2.yaml"]

    dry = run_snakemake(workflow_dir, "-n", *args)
    # full + 32 counterfactual + 100 down-weighted (Figs. 13/14); the fleet's 500 models in 100 jobs (5 seeds each)
    assert re.search(r"train_model\s+133\n", dry.stdout), dry.stdout[-2000:]
    assert re.search(r"train_subset\s+100\n", dry.stdout), dry.stdout[-2000:]
    assert not log.exists()  # a dry run submits nothing
    # every job of the DAG, as the profile resolves its resources: gpu=1 exactly for the GPU rules
    # and the CPUs that go with the GPU (cpus_per_gpu=8, --cpus-per-gpu) for each of them
    gpu_by_rule, runtime_by_rule = defaultdict(set), defaultdict(set)
    rule = None
    for line in dry.stdout.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = m.group(1)
        elif line.strip().startswith("resources:") and rule != "all":
            gpu_by_rule[rule].add((bool(re.search(r"\bgpu=1\b", line)), bool(re.search(r"\bcpus_per_gpu=8\b", line))))
            runtime_by_rule[rule].add(int(re.search(r"\bruntime=(\d+)", line).group(1)))
    # wall time (minutes): measurements per model (resources.measure_runtime), the 5 seeds of a subset in one job
    assert runtime_by_rule["measure_model"] == {60} and runtime_by_rule["measure_subset"] == {5 * 60}
    assert {r for r, v in gpu_by_rule.items() if any(gpu for gpu, _ in v)} == GPU_RULES
    assert all(len({gpu for gpu, _ in v}) == 1 for v in gpu_by_rule.values())
    # (a rule without a GPU in this experiment, attribute_queries here, gets --cpus-per-task: the plugin reads
    # cpus_per_gpu only for GPU jobs)
    assert all(cpus for r in GPU_RULES for _, cpus in gpu_by_rule[r]), dict(gpu_by_rule)

    # The first status check is put off for an hour so that no job is seen to "finish" without its outputs (which
    # would stop further submissions). Snakemake is stopped once the submissions this test checks have all arrived
    # (event-driven: a slow or busy machine only takes longer, it cannot stop the wait early).
    exe = Path(sys.executable).with_name("snakemake")
    proc = subprocess.Popen([str(exe), *args, "--immediate-submit", "--notemp", "--jobs", "5000",
                             "--slurm-init-seconds-before-status-checks", "3600"], cwd=workflow_dir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 1800  # a safety net against a hang, not a timing assumption
        while proc.poll() is None and time.monotonic() < deadline:
            calls = _submissions(log)
            if ALWAYS_SUBMITTED <= set(calls) and len(calls["train_subset"]) >= 100:
                break
            time.sleep(1)
    finally:
        proc.kill()  # nothing to clean up: the jobs exist only in the stub's log
        proc.wait(timeout=60)
    calls = _submissions(log)
    # which further jobs get submitted before Snakemake is stopped varies; the first wave always is (GPU and CPU
    # rules both), and every submission seen is checked below
    assert ALWAYS_SUBMITTED <= set(calls), sorted(calls)
    # at least the full model and the 100 subsets (the counterfactual runs wait for select_counterfactuals)
    assert len(calls["train_model"]) >= 1 and len(calls["train_subset"]) >= 100
    for rule, submitted in calls.items():
        for options in submitted:
            assert ("--gpus=1" in options) == (rule in GPU_RULES), (rule, options)
            assert ("--cpus-per-gpu=8" in options) == (rule in GPU_RULES), (rule, options)
            assert "-p gpuq" in options and "-A proj42" in options
            assert re.search(r"--mem \d+", options) and re.search(r"-t \d+", options)
    train = calls["train_model"][0]
    assert "--mem 32000" in train and "-t 120" in train  # cifar2's resources.train_*
    assert "-t 600" in calls["train_subset"][0]  # five seeds: 5 x resources.train_runtime


def test_slurm_profile_gives_cpus_to_every_rule_that_can_ask_for_a_gpu(workflow_dir: Path):
    """Every rule whose resources can hold `gpu=1` (some only in some experiments, e.g. attribute_queries) gets
    CPUs per GPU from the profile; without an entry the plugin would fall back to --cpus-per-task alone."""
    import yaml

    gpu_rules = set()
    for smk in (workflow_dir / "rules").glob("*.smk"):
        rule = None
        for line in smk.read_text().splitlines():
            if m := re.match(r"^(?:local)?rule (\w+):", line):
                rule = m.group(1)
            elif re.match(r"^\s+gpu=1\b", line):
                gpu_rules.add(rule)
    assert GPU_RULES <= gpu_rules
    profile = yaml.safe_load((workflow_dir / "profiles/slurm/config.yaml").read_text())
    with_cpus = {r for r, res in profile["set-resources"].items() if res.get("cpus_per_gpu") == 8}
    assert with_cpus == gpu_rules
