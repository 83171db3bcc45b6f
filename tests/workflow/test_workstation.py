"""The workstation profile (several jobs per GPU) and the GPU slots a job claims under it."""

from __future__ import annotations

import re

from diffattr.runtime import claim_gpu_slots
from tests.conftest import run_snakemake


def test_profile_packs_small_jobs_and_gives_scoring_a_whole_gpu(workflow_dir):
    out = run_snakemake(workflow_dir, "-n", "--profile", "profiles/workstation", "--configfile",
                        "experiments/smoke.yaml").stdout
    gpu: dict[str, set[int]] = {}
    for block in out.split("\n\n"):
        rule = re.search(r"^rule (\w+):", block.strip(), re.M)
        res = re.search(r"resources: .*", block)
        if rule and res:
            found = re.search(r"gpu=(\d+)", res.group(0))
            gpu.setdefault(rule.group(1), set()).add(int(found.group(1)) if found else 0)
    for rule in ("train_model", "train_subset", "measure_model", "measure_subset", "measure_counterfactuals"):
        assert gpu[rule] == {1}, rule  # four of them share one GPU
    for rule in ("compute_kfac_scores", "compute_features", "compute_scores", "fit_curvature"):
        assert gpu[rule] == {4}, rule
    assert gpu["prepare_dataset"] == {0}


def test_jobs_claim_free_slots_of_one_device(tmp_path):
    base = {"DIFFATTR_GPUS": "0,1", "DIFFATTR_JOBS_PER_GPU": "2", "DIFFATTR_GPU_LOCKS": str(tmp_path)}
    small, whole, small2 = dict(base), dict(base), dict(base)
    a = claim_gpu_slots(1, small)
    b = claim_gpu_slots(4, whole)  # a whole GPU: device 1, the only one with both slots free
    c = claim_gpu_slots(1, small2)
    assert (small["CUDA_VISIBLE_DEVICES"], whole["CUDA_VISIBLE_DEVICES"], small2["CUDA_VISIBLE_DEVICES"]) == \
        ("0", "1", "0")
    assert len(a) == 1 and len(b) == 2 and len(c) == 1
    assert claim_gpu_slots(1, {**base, "CUDA_VISIBLE_DEVICES": "3"}) == []  # pinned already: left alone
    assert claim_gpu_slots(0, dict(base)) == [] and claim_gpu_slots(1, {}) == []  # CPU jobs, no workstation
    for f in a + b + c:
        f.close()
    d = dict(base)
    assert len(claim_gpu_slots(2, d)) == 2 and d["CUDA_VISIBLE_DEVICES"] == "0"  # released when closed
