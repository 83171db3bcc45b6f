"""Shared fixtures: repository paths and a scratch copy of the workflow."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
WORKFLOW_PARTS = ["Snakefile", "rules", "report", "scripts", "envs", "schemas", "config.yaml", "experiments", "src", "requirements"]


def copy_workflow(wd: Path) -> Path:
    """Copy the workflow (Snakefile, rules, scripts, configs) into ``wd``."""
    wd.mkdir(parents=True)
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, wd / part, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, wd / part)
    return wd


@pytest.fixture
def workflow_dir(tmp_path: Path) -> Path:
    """A scratch copy of the workflow to run Snakemake in."""
    return copy_workflow(tmp_path / "wf")


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole smoke study (experiments/smoke.yaml), run once through real Snakemake; returns its results dir."""
    wd = copy_workflow(tmp_path_factory.mktemp("smoke") / "wf")
    run_snakemake(wd, "--cores", "2", "--configfile", "experiments/smoke.yaml")
    return wd / "results" / "smoke"


def run_snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real snakemake CLI of this environment in ``workdir``."""
    exe = Path(sys.executable).with_name("snakemake")
    proc = subprocess.run([str(exe), *args], cwd=workdir, capture_output=True, text=True, timeout=1800)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc
