"""The real Snakemake workflow on scratch copies: dry runs of every config, lint, the smoke run, bad configs."""

from __future__ import annotations

import re

import pytest
import yaml

from diffattr.data import read_subsets, read_train
from tests.conftest import REPO, run_snakemake

CONFIGS = ["config.yaml", *sorted(f"experiments/{p.name}" for p in (REPO / "experiments").glob("*.yaml"))]
# an overlay experiments/<base>/<name>.yaml is given after its experiment
CONFIGS += [f"experiments/{p.parent.name}.yaml experiments/{p.parent.name}/{p.name}"
            for p in sorted((REPO / "experiments").glob("*/*.yaml"))]


@pytest.mark.parametrize("configfile", CONFIGS)
def test_dry_run_every_config(workflow_dir, configfile):
    proc = run_snakemake(workflow_dir, "-n", "--cores", "1", "--configfile", *configfile.split())
    assert "prepare_dataset" in proc.stdout


def _priorities(workflow_dir, *args: str) -> dict[str, dict[str, int]]:
    """``{rule: {wildcards: priority}}`` from the dry run's job list (a job without a printed priority has 0)."""
    out = run_snakemake(workflow_dir, "-n", "--cores", "2", *args).stdout
    priority: dict[str, dict[str, int]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if rule:
            found = re.search(r"^\s+priority: (\d+)$", block, re.M)
            wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
            priority.setdefault(rule.group(1), {})[wildcards.group(1) if wildcards else ""] = (
                int(found.group(1)) if found else 0)
    return priority


def test_priorities_run_the_chain_first_then_the_fleets_training(workflow_dir):
    """The chain from the full model to the counterfactual retraining first, then the fleets' trainings, then their
    measurements (rules/common.smk: CRITICAL_PATH, FLEET_TRAINING, model_priority)."""
    quick = _priorities(workflow_dir)
    chain = [quick[r][w] for r in ("train_model", "sample_images", "fit_curvature", "compute_kfac_scores",
                                   "compute_scores") for w in quick[r]]
    assert min(chain) > max(quick["train_subset"].values()), quick
    assert min(quick["train_subset"].values()) > max(quick["measure_subset"].values()), quick
    # the ablations' down-weighted models are a fleet, trained and measured by the {model} rules
    abl = _priorities(workflow_dir, "--configfile", "experiments/ablations.yaml")
    assert abl["train_model"]["model=full"] == max(chain)
    downweight = {w: p for w, p in abl["train_model"].items() if w.startswith("model=downweight")}
    assert len(downweight) == 16 and set(downweight.values()) == set(abl["train_subset"].values()), abl
    measured = {w: p for w, p in abl["measure_model"].items() if w.startswith("model=downweight")}
    assert len(measured) == 16 and set(measured.values()) == set(abl["measure_subset"].values()), abl


def test_lint_is_clean(workflow_dir):
    proc = run_snakemake(workflow_dir, "--lint", "--cores", "1")
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr


def test_bad_config_fails_at_parse_time_naming_the_key(workflow_dir):
    (workflow_dir / "bad.yaml").write_text(yaml.safe_dump({"experiment": "bad", "subsets": {"fractoin": 0.5}}))
    proc = run_snakemake(workflow_dir, "-n", "--cores", "1", "--configfile", "bad.yaml", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "config key 'subsets'" in out and "did you mean 'fraction'" in out, out[-2000:]


def test_smoke_data_stage(workflow_dir):
    targets = ["results/smoke/data/train.h5", "results/smoke/data/subsets.h5"]
    run_snakemake(workflow_dir, *targets, "--cores", "2", "--configfile", "experiments/smoke.yaml")
    train = read_train(workflow_dir / targets[0])
    sub = read_subsets(workflow_dir / targets[1])
    assert train["images"].shape == (40, 1, 8, 8)
    assert sub["masks"].shape == (3, 40) and (sub["masks"].sum(1) == 20).all()
    assert (workflow_dir / "results/smoke/logs/prepare_dataset.log").read_text().count("training set: 40 images") == 1
    # nothing to do on a rerun
    proc = run_snakemake(workflow_dir, *targets, "-n", "--cores", "1", "--configfile", "experiments/smoke.yaml")
    assert "Nothing to be done" in proc.stdout + proc.stderr
