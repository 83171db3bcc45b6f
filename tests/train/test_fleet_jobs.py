"""train_subset / measure_subset: the seeds of one subset in one job, each model exactly as a job of its own
would make it, and a job killed part-way loses no finished model; measure_counterfactuals: every run in one job, on
its own samples, exactly as measuring it on all of them."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from diffattr.config import validate_config
from diffattr.data.space import to_uint8
from diffattr.io import read_h5, write_h5
from diffattr.models import load_model
from diffattr.stages.data import make_subsets, prepare_dataset
from diffattr.stages.measure import measure_counterfactuals, measure_model, measure_subset
from diffattr.stages.train import train_model, train_subset
from diffattr.train import loop
from tests.conftest import paths

K = 2


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("fleet")
    cfg = validate_config({"experiment": "t", "data": {"source": "digits", "classes": ["1", "7"], "per_class": 12},
                           "subsets": {"n_subsets": 2, "seeds_per_subset": K},
                           "train": {"steps": 6, "subset_steps": 5, "batch_size": 8, "checkpoint_every": 2},
                           "measure": {"mc_samples": 4, "timestep_mc_samples": 2, "timesteps": [1, 500],
                                       "measurements": ["loss", "elbo", "timestep_loss"]}})
    prepare_dataset(paths(), paths(train=root / "train.h5"), data=cfg["data"])
    make_subsets(paths(train=root / "train.h5"), paths(subsets=root / "subsets.h5"), subsets=cfg["subsets"])
    return root, cfg


def _outputs(root: Path, ids: list[str]) -> dict[str, list[str]]:
    names = {"config": "config.json", "weights": "diffusion_pytorch_model.safetensors", "loss": "loss.csv",
             "info": "train_info.json"}
    return {k: [str(root / "models" / m / f) for m in ids] for k, f in names.items()}


def _train_subset(data: Path, out: Path, cfg: dict, ids: list[str]) -> None:
    train_subset(paths(train=data / "train.h5", subsets=data / "subsets.h5"), paths(**_outputs(out, ids)),
                 model_ids=ids, checkpoints=[str(out / "checkpoints" / f"{m}.pt") for m in ids],
                 model=cfg["model"], train=cfg["train"], diffusion=cfg["diffusion"], device="cpu")


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_model(model_dir, "cpu").state_dict()


def test_one_job_per_subset_equals_one_job_per_model(study, tmp_path):
    root, cfg = study
    ids = [f"subset1_seed{k}" for k in range(K)]
    _train_subset(root, tmp_path, cfg, ids)
    assert not list((tmp_path / "checkpoints").glob("*.pt"))  # removed once every model is saved
    alone = tmp_path / "alone"
    out = _outputs(alone, ids[1:])
    train_model(paths(train=root / "train.h5", subsets=root / "subsets.h5"), paths(**{k: v[0] for k, v in out.items()}),
                model_id=ids[1], checkpoint=str(alone / "ckpt.pt"), model=cfg["model"], train=cfg["train"],
                diffusion=cfg["diffusion"], downweight_factor=1.0, device="cpu")
    ref, got = _weights(alone / "models" / ids[1]), _weights(tmp_path / "models" / ids[1])
    for name, p in ref.items():
        torch.testing.assert_close(got[name], p, rtol=0, atol=0, msg=name)
    other = _weights(tmp_path / "models" / ids[0])
    assert any(not torch.equal(other[n], p) for n, p in ref.items())  # the seeds differ

    # measure_subset: each seed's file equals what measure_model writes for that model alone
    samples = tmp_path / "samples.h5"
    x = np.random.default_rng(0).uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32)
    write_h5(samples, {"samples": x, "images": to_uint8(x)})
    meas = [str(tmp_path / f"m/{m}.h5") for m in ids]
    files = [f for k in _outputs(tmp_path, ids).values() for f in k]
    measure_subset(paths(models=sorted(files), samples=samples), paths(measurements=meas), model_ids=ids,
                   measure=cfg["measure"], diffusion=cfg["diffusion"], device="cpu")
    one = str(tmp_path / "one.h5")
    measure_model(paths(model=[f for f in files if f"/{ids[1]}/" in f], samples=samples), paths(measurements=one),
                  model_id=ids[1], measure=cfg["measure"], diffusion=cfg["diffusion"], device="cpu")
    with h5py.File(meas[1]) as a, h5py.File(one) as b:
        assert a.attrs["model_id"] == ids[1] and a.attrs["seed_index"] == 1 and a.attrs["subset"] == 1
        assert sorted(a) == sorted(b) == ["elbo", "elbo_se", "loss", "loss_se", "timestep_loss", "timestep_loss_se"]
        for name in a:
            np.testing.assert_array_equal(a[name][()], b[name][()])


def test_a_job_killed_after_its_first_model_does_not_train_it_again(study, tmp_path, monkeypatch, caplog):
    root, cfg = study
    ids = [f"subset0_seed{k}" for k in range(K)]
    real_train = loop.train

    def dies_on_the_second_model(*args, **kwargs):
        if (tmp_path / "models" / ids[0] / "train_info.json").exists():
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(loop, "train", dies_on_the_second_model)
    with pytest.raises(KeyboardInterrupt):
        _train_subset(root, tmp_path, cfg, ids)
    assert (tmp_path / "checkpoints" / f"{ids[0]}.pt").is_file()  # kept: the job did not finish
    first = _weights(tmp_path / "models" / ids[0])
    for f in (tmp_path / "models").rglob("*"):  # Snakemake discards the outputs of a job that did not finish
        if f.is_file():
            f.unlink()
    monkeypatch.setattr(loop, "train", real_train)
    steps = []
    monkeypatch.setattr(loop, "train", lambda *a, **kw: real_train(*a, **kw, on_step=lambda s, _: steps.append(s)))
    with caplog.at_level(logging.INFO, logger="diffattr.train.loop"):
        _train_subset(root, tmp_path, cfg, ids)
    assert "resumed from" in caplog.text and "at step 5/5" in caplog.text
    assert steps == [1, 2, 3, 4, 5]  # only the second model trains
    for name, p in first.items():
        torch.testing.assert_close(_weights(tmp_path / "models" / ids[0])[name], p, rtol=0, atol=0, msg=name)
    assert not list((tmp_path / "checkpoints").glob("*.pt"))


@pytest.mark.parametrize("crn", [True, False])
def test_counterfactual_runs_are_measured_on_their_samples_as_on_all(study, tmp_path, crn):
    """Each run's loss on the samples its evaluation reads equals what measure_model gives there (the same draws:
    common random numbers keyed by the sample's index, or the model's own), NaN on the others."""
    root, cfg = study
    ids = [f"subset0_seed{k}" for k in range(K)]
    _train_subset(root, tmp_path, cfg, ids)  # stand-ins for retrained runs
    samples = tmp_path / "samples.h5"
    x = np.random.default_rng(1).uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32)
    write_h5(samples, {"samples": x, "images": to_uint8(x)})
    removals = write_h5(tmp_path / "removals.h5", {"sample": np.array([-1, 3, 1])})  # a random run, two methods'
    runs = [ids[0], ids[1], ids[0]]
    for r, m in enumerate(runs):  # run r: a copy of one of them, as models/cf{r}
        shutil.copytree(tmp_path / "models" / m, tmp_path / "models" / f"cf{r}")
    measure = {**cfg["measure"], "common_random_numbers": crn}
    files = {m: [f for k in _outputs(tmp_path, [m]).values() for f in k] for m in ids}
    out = tmp_path / "counterfactual.h5"
    cf_files = [f for k in _outputs(tmp_path, ["cf0", "cf1", "cf2"]).values() for f in k]
    measure_counterfactuals(paths(models=sorted(cf_files), samples=samples, removals=removals),
                            paths(measurements=out), model_ids=["cf0", "cf1", "cf2"], measure=measure,
                            diffusion=cfg["diffusion"], device="cpu")
    got = read_h5(out)
    assert got["loss"].shape == (3, 4) and got["model_id"].tolist() == ["cf0", "cf1", "cf2"]
    for r, (model, on) in enumerate(zip(runs, [[1, 3], [3], [1]], strict=True)):
        alone = tmp_path / f"alone{r}.h5"
        measure_model(paths(model=files[model], samples=samples), paths(measurements=alone), model_id=f"cf{r}",
                      measure={**measure, "measurements": ["loss"]}, diffusion=cfg["diffusion"], device="cpu")
        ref = read_h5(alone)
        np.testing.assert_allclose(got["loss"][r, on], ref["loss"][on], rtol=1e-6)
        np.testing.assert_allclose(got["loss_se"][r, on], ref["loss_se"][on], rtol=1e-5)
        assert np.isnan(np.delete(got["loss"][r], on)).all()
    # two runs of one model differ only where their draws do: with common random numbers not at all
    same = np.allclose(got["loss"][0, 1], got["loss"][2, 1], rtol=1e-6)
    assert same == crn


def test_counterfactual_measurement_refuses_a_plan_of_another_size(study, tmp_path):
    root, cfg = study
    x = np.zeros((2, 1, 8, 8), np.float32)
    write_h5(tmp_path / "samples.h5", {"samples": x, "images": to_uint8(x)})
    removals = write_h5(tmp_path / "removals.h5", {"sample": np.array([-1, 0])})
    with pytest.raises(ValueError, match="plans 2 counterfactual runs, but 1 models"):
        measure_counterfactuals(paths(models=[str(tmp_path / "models/cf0/config.json")], samples=tmp_path / "samples.h5",
                                      removals=removals), paths(measurements=tmp_path / "o.h5"), model_ids=["cf0"],
                                measure=cfg["measure"], diffusion=cfg["diffusion"], device="cpu")
