"""Benches on the smoke study. bench/oracle_settings.py: a re-measurement at the study's own settings reproduces the
stored oracles bit for bit in a new process (the bench stops otherwise), and a cheaper setting is compared LDS by
LDS. bench/lds_budget.py: on all the study's subsets and samples it gives what compute_lds wrote."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

BENCH = [sys.executable, str(REPO / "bench/oracle_settings.py"), "--study", "results/smoke",
         "--configfile", "experiments/smoke.yaml"]


def run_bench(smoke_repo, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH, *args], cwd=smoke_repo, capture_output=True, text=True, timeout=900)


def test_fewer_draws_are_compared_with_the_reproduced_study(smoke_study):
    proc = run_bench(smoke_study.parents[1], "--set", "mc_samples=4", "--set", "timestep_mc_samples=2",
                     "--precision", "bf16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "measure.mc_samples 8 -> 4, measure.timestep_mc_samples 4 -> 2, measure.precision fp32 -> bf16" in out
    for oracle in ("loss", "elbo", "trajectory", "timestep_loss"):
        assert re.search(rf"^{oracle}\s+\d\.\d\de[+-]\d\d\s+-?\d\.\d{{4}}", out, re.M), out
    pairs = re.search(r"largest change over all (\d+) \(method, pair\) LDS: (\d+\.\d+) points", out)
    assert pairs and int(pairs[1]) > 0 and float(pairs[2]) > 0, out[-2000:]  # half the draws move some LDS


def test_an_unknown_or_unchanged_setting_is_refused(smoke_study):
    proc = run_bench(smoke_study.parents[1], "--set", "mc_draws=4")
    assert proc.returncode != 0 and "--set 'mc_draws=4'" in proc.stderr and "mc_samples" in proc.stderr
    proc = run_bench(smoke_study.parents[1], "--set", "mc_samples=8")
    assert proc.returncode != 0 and "nothing to check" in proc.stderr


def test_lds_budget_on_the_whole_study_equals_its_lds_json(smoke_study):
    proc = subprocess.run([sys.executable, str(REPO / "bench/lds_budget.py"), "--study", "results/smoke",
                           "--subsets", "3", "--samples", "3", "6", "--draws", "2"],
                          cwd=smoke_study.parents[1], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((smoke_study / "metrics/lds.json").read_text())
    lines = {tuple(line.split()[:3]): line.split() for line in proc.stdout.splitlines()[2:]}
    loss = [r for r in summary["results"] if r["scores"] == r["target"] == "loss"]
    assert loss and len(lines) == 2 * (len(loss) + 1)
    for r in loss:  # printed to 1 (mean) and 2 (s.e.) decimals
        _, _, _, mean, sd, se = lines[(r["method"], "3", "3")]
        assert abs(float(mean) - r["best"]["mean"] * 100) <= 0.051 and float(sd) == 0
        assert abs(float(se) - r["best"]["se"] * 100) <= 0.0051
        assert abs(float(lines[(r["method"], "3", "6")][5]) - r["best"]["se"] * 100 / 2 ** 0.5) <= 0.0051
    assert abs(float(lines[("oracle", "3", "3")][3]) - summary["oracle"]["loss"]["mean"] * 100) <= 0.051


def test_fleet_bench_times_rounds_that_start_training_together():
    """bench/fleet.py (the packed fleet's measurement on a GPU): every round's jobs train the same steps from one
    common start, and models per hour and the ratio to one job follow from that training time."""
    proc = subprocess.run([sys.executable, str(REPO / "bench/fleet.py"), "--config", "config.yaml", "--jobs", "1", "2",
                           "--steps", "2", "--threads", "1"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unet_tiny at 8x8, batch 64, fp32; 2 steps per model" in proc.stdout
    rows = [line.split() for line in proc.stdout.splitlines() if re.match(r"^\s+[12]\s", line)]
    assert [r[0] for r in rows] == ["1", "2"], proc.stdout
    per_hour = []
    for jobs, train_s, job_s, models_h, _, wall_s in rows:
        assert 0 < float(job_s) <= float(train_s) + 0.01 < float(wall_s)  # start-ups outside the training time
        # models/h = jobs x 3600 / training time, checked against train s as printed (2 decimals): at 2 steps a
        # round trains for a fraction of a second, so a relative tolerance would depend on the machine's speed
        assert int(jobs) * 3600 / float(models_h) == pytest.approx(float(train_s), abs=0.0051)
        per_hour.append(float(models_h))
    assert rows[0][4] == "1.00x" and float(rows[1][4][:-1]) == pytest.approx(per_hour[1] / per_hour[0], abs=0.01)


def test_train_throughput_times_the_chosen_presets_and_counts_their_operations():
    bench = [sys.executable, str(REPO / "bench/train_throughput.py"), "--presets", "unet_tiny"]
    proc = subprocess.run([*bench, "--batch", "4", "--precisions", "fp32", "bf16", "--steps", "1", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("unet_tiny")]
    assert [(r[2], r[3]) for r in rows] == [("4", "fp32"), ("4", "bf16")]
    for r in rows:  # images/s = batch / (s/step), against s/step as printed (4 decimals), whatever the speed
        assert float(r[4]) > 0 and 4 / float(r[6]) == pytest.approx(float(r[4]), abs=0.000051)
    proc = subprocess.run([*bench, "unet_small", "--ops"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ops = dict(re.findall(r"^(\w+)\s+(\d+) aten operations per training step$", proc.stdout, re.M))
    assert set(ops) == {"unet_tiny", "unet_small"} and 1000 < int(ops["unet_tiny"]) < int(ops["unet_small"])
    proc = subprocess.run([*bench, "unet_small", "--flops"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    flops = dict(re.findall(r"^(\w+)\s+([\d.]+) GFLOP per image per training step$", proc.stdout, re.M))
    assert set(flops) == {"unet_tiny", "unet_small"} and 0 < float(flops["unet_tiny"]) < float(flops["unet_small"])


def test_flops_per_image_do_not_depend_on_the_batch():
    from bench.train_throughput import count_flops

    assert count_flops("unet_tiny", batch=2) == pytest.approx(count_flops("unet_tiny", batch=5), rel=1e-9)


def test_oracle_variance_compares_draw_schemes_on_model_pairs(smoke_study):
    """bench/oracle_variance.py: the spread of a model-to-model difference over repeated draws, per scheme, with
    the first scheme as the 1.00x reference; a malformed scheme is refused by name."""
    bench = [sys.executable, str(REPO / "bench/oracle_variance.py"), "--study", "results/smoke",
             "--configfile", "experiments/smoke.yaml", "--pairs", "1", "--samples", "2", "--reps", "3"]
    proc = subprocess.run([*bench, "--schemes", "uniform:8", "importance:20:8"], cwd=smoke_study.parents[1],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 model pairs x 2 samples, 3 repetitions per scheme" in proc.stdout
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()
            if line.startswith(("uniform:", "importance:"))}
    assert rows["uniform:8"][2] == rows["uniform:8"][4] == "(1.00x)", proc.stdout
    for name in rows:
        assert float(rows[name][1]) > 0 and float(rows[name][3]) > 0  # independent draws: the difference varies
    proc = subprocess.run([*bench, "--schemes", "importance:8"], cwd=smoke_study.parents[1], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "--schemes 'importance:8'" in proc.stderr
    # the timestep losses (the smoke study's t = 1, 100, 900): per timestep, antithetic pairs at t = 1
    proc = subprocess.run([*bench, "--schemes", "steps:4", "steps:4,2,2:anti=1"], cwd=smoke_study.parents[1],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.startswith("steps:")}
    assert rows["steps:4"][2:7:2] == ["(1.00x)"] * 3 and rows["steps:4"][7] == "12", proc.stdout
    assert rows["steps:4,2,2:anti=1"][7] == "8" and float(rows["steps:4,2,2:anti=1"][1]) > 0, proc.stdout
    proc = subprocess.run([*bench, "--schemes", "steps:4,2:anti=1"], cwd=smoke_study.parents[1], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "2 counts for the 3 measure.timesteps" in proc.stderr
