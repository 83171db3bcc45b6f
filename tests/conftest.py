"""Shared fixtures: repository paths and a scratch copy of the workflow."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
WORKFLOW_PARTS = ["Snakefile", "rules", "scripts", "envs", "schemas", "config.yaml", "experiments", "src", "requirements"]


@pytest.fixture
def workflow_dir(tmp_path: Path) -> Path:
    """A scratch copy of the workflow (Snakefile, rules, scripts, configs) to run Snakemake in."""
    wd = tmp_path / "wf"
    wd.mkdir()
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, wd / part, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, wd / part)
    return wd


def run_snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real snakemake CLI of this environment in ``workdir``."""
    exe = Path(sys.executable).with_name("snakemake")
    proc = subprocess.run([str(exe), *args], cwd=workdir, capture_output=True, text=True, timeout=1800)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc
