"""Sharded scoring on the smoke study: scores gathered from any number of sample shards, and TRAK features from any
number of training-example shards, equal the unsharded ones (the smoke study itself runs with 2 of each)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from diffattr.config import configured_variants, kfac_queries, load_config
from diffattr.io import ArtefactError, read_h5
from diffattr.scores.io import read_scores
from diffattr.scores.registry import method_sections
from diffattr.scores.shards import FeatureFiles, shard_bounds
from diffattr.stages.baselines import compute_features
from diffattr.stages.influence import compute_kfac_scores, gather_kfac_scores
from tests.conftest import REPO, paths

SMOKE = load_config(REPO / "experiments/smoke.yaml")
QUERIES = kfac_queries(SMOKE)


@pytest.fixture
def study_threads(smoke_study):
    """Run with the thread count of the study's own scoring jobs: at the smallest damping K-FAC's preconditioner is
    so ill-conditioned that a different float summation order (another thread count) changes scores visibly."""
    log = (smoke_study / "logs/compute_kfac_scores/0.log").read_text()
    before = torch.get_num_threads()
    torch.set_num_threads(int(re.search(r"started \(threads=(\d+)\)", log).group(1)))
    yield
    torch.set_num_threads(before)


def _kfac_inputs(study):
    return paths(model=[str(study / "models/full/config.json")], train=str(study / "data/train.h5"),
                 samples=str(study / "samples/samples.h5"),
                 curvatures=[str(study / f"curvature/{v}.h5") for v in configured_variants(SMOKE)])


def _files(root, shard=None):
    base = root if shard is None else root / str(shard)
    return [str(base / v / f"{q}.h5") for v, qs in QUERIES.items() for q in qs]


@pytest.mark.parametrize("n_shards", [1, 3])
def test_kfac_scores_from_any_number_of_sample_shards_equal(smoke_study, tmp_path, n_shards, study_threads):
    influence = {**SMOKE["influence"], "sample_shards": n_shards}
    for k in range(n_shards):
        compute_kfac_scores(_kfac_inputs(smoke_study), paths(scores=_files(tmp_path / "shards", k)), shard=k,
                            queries=QUERIES, influence=influence, diffusion=SMOKE["diffusion"],
                            hflip=SMOKE["train"]["hflip"], device="cpu")
    gather_kfac_scores(paths(shards=[f for k in range(n_shards) for f in _files(tmp_path / "shards", k)]),
                       paths(scores=_files(tmp_path / "scores")))
    for v, qs in QUERIES.items():
        for q in qs:
            ours, study = read_scores(tmp_path / f"scores/{v}/{q}.h5"), read_scores(smoke_study / f"scores/{v}/{q}.h5")
            assert ours["scores"].shape == (len(SMOKE["influence"]["dampings"]), SMOKE["sample"]["n_samples"], 40)
            for d, lam in enumerate(SMOKE["influence"]["dampings"]):
                # A sample's query gradient is computed in a vmap batch of its shard's samples, so its float
                # rounding depends on the batch; that can move an int8 bank entry by one level, and at λ = 1e-8 the
                # preconditioner of this 40-image model is ill-conditioned enough to show it at the 1e-3 level.
                a, b = ours["scores"][d], study["scores"][d]
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-2 * np.abs(b).max(),
                                           err_msg=f"{v}/{q}, λ={lam:g}, {n_shards} shards")
                assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9999
            assert json.loads(ours.attrs["timings"])["shards"] == n_shards
            assert ours.attrs["args"] == study.attrs["args"]


def test_only_the_first_variant_scores_the_timestep_and_trajectory_queries(smoke_study):
    first, second = configured_variants(SMOKE)
    assert {p.stem for p in (smoke_study / f"scores/{first}").glob("*.h5")} == {
        "loss", "elbo", "trajectory", "timestep_loss_t1", "timestep_loss_t100", "timestep_loss_t900"}
    assert {p.stem for p in (smoke_study / f"scores/{second}").glob("*.h5")} == {"loss", "elbo"}


def test_gather_refuses_shards_that_do_not_tile_the_samples(smoke_study, tmp_path):
    shard0 = [f for f in _files(smoke_study / "shards/kfac", 0)]
    with pytest.raises(ArtefactError, match="cover samples"):
        gather_kfac_scores(paths(shards=shard0), paths(scores=_files(tmp_path / "scores")))


@pytest.mark.parametrize("n_shards", [1, 3])
def test_trak_features_from_any_number_of_shards_equal(smoke_study, tmp_path, n_shards, study_threads):
    args = method_sections(SMOKE, "trak")
    args = {**args, "trak": {**args["trak"], "feature_shards": n_shards}}
    inputs = paths(model=[str(smoke_study / "models/full/config.json")], train=str(smoke_study / "data/train.h5"),
                   samples=str(smoke_study / "samples/samples.h5"))
    ours = [tmp_path / f"{k}.h5" for k in range(n_shards)]
    for k, path in enumerate(ours):
        compute_features(inputs, paths(features=str(path)), gradient_output="loss", shard=k, args=args, device="cpu")
    assert [tuple(read_h5(p).attrs["examples"]) for p in ours] == shard_bounds(40, n_shards)
    study = sorted((smoke_study / "shards/features/loss").glob("*.h5"))
    assert len(study) == SMOKE["trak"]["feature_shards"]
    key_args = json.loads(read_h5(study[0]).attrs["args"])
    mine = FeatureFiles(ours, "loss_features", key_args).matrix("loss_features", lambda: None)
    theirs = FeatureFiles(study, "loss_features", key_args).matrix("loss_features", lambda: None)
    assert mine.shape == (40, SMOKE["trak"]["projection_dim"])
    np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6 * float(theirs.abs().max()))
    with pytest.raises(ArtefactError, match="other arguments"):
        FeatureFiles(ours, "loss_features", {**key_args, "projection_seed": 1}).matrix("loss_features", lambda: None)


def test_shard_bounds_tile_the_range():
    assert shard_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert shard_bounds(5, 1) == [(0, 5)]
    with pytest.raises(ValueError, match="cannot split 2 items into 3"):
        shard_bounds(2, 3)
