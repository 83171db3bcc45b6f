"""`make resume` (recovery after a killed run): unlock, then --rerun-incomplete; refused while a run is alive.

The real recovery (killed runs finishing with identical results) is exercised by bench/reliability.py; this pins
the Makefile logic with a stub snakemake that records its arguments.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.conftest import REPO

STAMP_INPUTS = ["pyproject.toml", "requirements/base.txt", "requirements/nodeps.txt", "requirements/constraints.txt"]


def _setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    wd, venv, log = tmp_path / "wd", tmp_path / "venv", tmp_path / "calls.log"
    for part in ["Makefile", "experiments/smoke.yaml", *STAMP_INPUTS]:
        (wd / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / part, wd / part)
        os.utime(wd / part, (time.time() - 3600,) * 2)  # older than the install stamp: make installs nothing
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed").touch()
    stub = venv / "bin/snakemake"
    stub.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    stub.chmod(0o755)
    return wd, venv, log


def test_resume_unlocks_then_finishes_with_rerun_incomplete(tmp_path):
    wd, venv, log = _setup(tmp_path)
    proc = subprocess.run(["make", "resume", "EXP=smoke", f"VENV={venv}"], cwd=wd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines() == ["--unlock --configfile experiments/smoke.yaml",
                                            "--cores all --rerun-incomplete --configfile experiments/smoke.yaml"]


def test_resume_refuses_while_snakemake_runs_in_the_directory(tmp_path):
    wd, venv, log = _setup(tmp_path)
    alive = subprocess.Popen(["bash", "-c", "exec -a snakemake-run sleep 120"], cwd=wd)
    try:
        deadline = time.time() + 60
        while "snakemake-run" not in Path(f"/proc/{alive.pid}/cmdline").read_bytes().decode(errors="replace"):
            assert time.time() < deadline, "the stand-in process did not start"
            time.sleep(0.05)
        proc = subprocess.run(["make", "resume", "EXP=smoke", f"VENV={venv}"], cwd=wd, capture_output=True, text=True)
    finally:
        alive.kill()
        alive.wait()
    assert proc.returncode != 0
    assert f"Snakemake (pid {alive.pid}) is still running in {wd}" in proc.stderr
    assert not log.exists()  # nothing unlocked, nothing started
