"""Shared fixtures: repository paths and a scratch copy of the workflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
WORKFLOW_PARTS = ["Snakefile", "rules", "report", "scripts", "envs", "schemas", "config.yaml", "experiments", "examples", "src",
                  "requirements", "profiles"]
DVC_PARTS = ["dvc.yaml", ".dvc/config", ".dvcignore", ".gitignore", "Makefile"]
BIN = Path(sys.executable).parent
GIT_ID = ["-c", "user.name=diffattr-tests", "-c", "user.email=tests@diffattr.invalid"]


def paths(**named: str | Path | list) -> SimpleNamespace:
    """Named paths as a stage receives them from :func:`diffattr.runtime.run_stage` (str, or lists of str)."""
    return SimpleNamespace(**{k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in named.items()})


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


def tool_env() -> dict[str, str]:
    """Environment whose PATH finds this environment's snakemake and dvc first (dvc stages call snakemake)."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_tool(workdir: Path, *cmd: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command (dvc, git, make, ...) in ``workdir`` with :func:`tool_env`."""
    cmd = tuple(str(c) for c in cmd)
    proc = subprocess.run(list(cmd), cwd=workdir, capture_output=True, text=True, timeout=1800, env=tool_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def git_commit(repo: Path, message: str) -> None:
    run_tool(repo, "git", "add", "-A")
    run_tool(repo, "git", *GIT_ID, "commit", "-q", "-m", message)


@pytest.fixture(scope="session")
def smoke_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC copy of the project in which the whole smoke study ran once, through `dvc repro study@smoke`
    (which runs real Snakemake); its metrics and dvc.lock are committed."""
    wd = copy_workflow(tmp_path_factory.mktemp("smoke") / "wf")
    for part in DVC_PARTS:
        (wd / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / part, wd / part)
    run_tool(wd, "git", "init", "-q")
    git_commit(wd, "workflow")
    run_tool(wd, BIN / "dvc", "repro", "study@smoke")
    git_commit(wd, "smoke study")
    return wd


@pytest.fixture(scope="session")
def smoke_study(smoke_repo: Path) -> Path:
    """Results directory of the smoke study (see ``smoke_repo``)."""
    return smoke_repo / "results" / "smoke"


def run_snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real snakemake CLI of this environment in ``workdir``."""
    exe = Path(sys.executable).with_name("snakemake")
    proc = subprocess.run([str(exe), *args], cwd=workdir, capture_output=True, text=True, timeout=1800)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc
