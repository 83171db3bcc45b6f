"""Artefact versioning with the real dvc, git, make and snakemake binaries (no mocks), on the smoke study."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import BIN, git_commit, run_snakemake, run_tool

SMOKE_OUTS = ["data", "models", "samples", "measurements", "curvature", "scores", "counterfactual", "figures"]


def test_repro_records_every_output_and_metric(smoke_repo: Path):
    lock = (smoke_repo / "dvc.lock").read_text()
    for out in SMOKE_OUTS:
        assert f"path: results/smoke/{out}" in lock
    assert "results/smoke/metrics/lds.json" in lock
    status = run_tool(smoke_repo, BIN / "dvc", "status", "study@smoke")
    assert "up to date" in status.stdout


def test_metrics_show_lists_lds(smoke_repo: Path):
    shown = json.loads(run_tool(smoke_repo, BIN / "dvc", "metrics", "show", "--json").stdout)
    metrics = shown[""]["data"]["results/smoke/metrics/lds.json"]["data"]
    table = metrics["table"]
    assert "kfac_mc_expand" in table and "trak" in table
    written = json.loads((smoke_repo / "results/smoke/metrics/lds.json").read_text())["table"]
    assert table["kfac_mc_expand"]["loss->loss"]["best"] == written["kfac_mc_expand"]["loss->loss"]["best"]
    assert "results/smoke/metrics/counterfactual.json" in shown[""]["data"]


def test_push_then_pull_on_a_fresh_clone_leaves_snakemake_nothing_to_do(smoke_repo: Path, tmp_path: Path):
    remote = tmp_path / "remote"
    run_tool(smoke_repo, BIN / "dvc", "remote", "add", "--force", "-d", "scratch", str(remote))
    git_commit(smoke_repo, "scratch remote")
    pushed = run_tool(smoke_repo, BIN / "dvc", "push", "study@smoke")
    assert "pushed" in pushed.stdout and any(remote.rglob("*"))

    clone = tmp_path / "clone"
    run_tool(tmp_path, "git", "clone", "-q", str(smoke_repo), str(clone))
    assert not (clone / "results/smoke/models").exists()  # only the committed metrics came with git
    assert (clone / "results/smoke/metrics/lds.json").exists()
    # the documented target, on this environment (-o: do not reinstall it)
    venv = Path(BIN).parent
    run_tool(clone, "make", "restore", "EXP=smoke", f"VENV={venv}", "-o", str(venv / ".installed"))
    for out in SMOKE_OUTS:
        assert (clone / "results/smoke" / out).exists(), out
    dry = run_snakemake(clone, "-n", "--cores", "1", "--configfile", "experiments/smoke.yaml")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    shutil.rmtree(remote)
