"""bench/oracle_settings.py on the smoke study: a re-measurement at the study's own settings reproduces the stored
oracles bit for bit in a new process (the bench stops otherwise), and a cheaper setting is compared LDS by LDS."""

from __future__ import annotations

import re
import subprocess
import sys

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
