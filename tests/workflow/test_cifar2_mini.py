"""experiments/cifar2-mini.yaml (the one-GPU CIFAR-2 benchmark) at smoke scale on a CPU: the real CIFAR-2 images
from the offline copy and the experiment's DAG, run end to end by real Snakemake under the workstation profile.
Smoke scale swaps its U-Net for the tiny one at 8x8 (its own 4.7M-parameter net needs minutes per K-FAC fit on two
cores); that preset is checked on its own below."""

from __future__ import annotations

import json

import torch
import yaml

from diffattr.config import load_config
from diffattr.data import read_train
from diffattr.models import build_unet, count_parameters
from tests.conftest import REPO, SHARED_DATASETS, run_snakemake

# The experiment shrunk to seconds per job; everything else (classes, image size, model, methods) is the file's.
SMOKE_SCALE = {
    "device": "cpu",
    "data": {"path": str(SHARED_DATASETS / "cifar10-jpeg.tar.gz"), "per_class": 6, "resize": 8},
    "model": {"preset": "unet_tiny"},
    "subsets": {"n_subsets": 2, "seeds_per_subset": 2},
    "diffusion": {"num_timesteps": 20},
    "train": {"steps": 2, "subset_steps": 2, "batch_size": 4, "checkpoint_every": 2},
    "sample": {"n_samples": 2, "batch_size": 2},
    "measure": {"mc_samples": 4, "timesteps": [1, 10], "batch_size": 8},
    "influence": {"curvature_mc_samples": 1, "gradient_mc_samples": 1, "batch_size": 4, "sample_shards": 2},
    "trak": {"projection_dim": 16, "feature_shards": 2},
    "evaluate": {"methods": ["kfac", "trak"], "counterfactual_samples": 1},
}


def test_cifar2_mini_runs_end_to_end_at_smoke_scale(workflow_dir):
    (workflow_dir / "smoke_scale.yaml").write_text(yaml.safe_dump(SMOKE_SCALE))
    run_snakemake(workflow_dir, "--profile", "profiles/workstation", "--cores", "2", "--configfile",
                  "experiments/cifar2-mini.yaml", "smoke_scale.yaml")
    out = workflow_dir / "results/cifar2-mini"
    train = read_train(out / "data/train.h5")
    assert train["images"].shape == (12, 3, 8, 8) and list(train["class_names"]) == ["automobile", "horse"]
    lds = json.loads((out / "metrics/lds.json").read_text())
    assert lds["n_subsets"] == 2 and lds["seeds_per_subset"] == 2 and lds["n_train"] == 12
    assert {"kfac_mc_expand", "kfac_empirical_reduce", "trak"} <= set(lds["table"])
    assert json.loads((out / "metrics/counterfactual.json").read_text())


def test_the_mini_unet_takes_cifar_images():
    cfg = load_config(REPO / "config.yaml", yaml.safe_load((REPO / "experiments/cifar2-mini.yaml").read_text()))
    net = build_unet(cfg["model"]["preset"])
    assert (net.config.sample_size, net.config.in_channels) == (32, 3) and count_parameters(net) == 4_749_955
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 32, 32), torch.tensor([0, 999])).sample.shape == (2, 3, 32, 32)
