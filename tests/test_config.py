from pathlib import Path

import pytest
import yaml

from diffattr.config import ConfigError, deep_merge, load_config, validate_config
from tests.conftest import REPO

CONFIGS = [REPO / "config.yaml", *sorted((REPO / "experiments").glob("*.yaml"))]
OVERLAYS = sorted((REPO / "experiments").glob("*/*.yaml"))  # experiments/<base>/<name>.yaml: on <base>.yaml


@pytest.mark.parametrize("path", OVERLAYS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_overlays_validate_over_their_experiment_and_name_their_own(path: Path):
    base, raw = yaml.safe_load(path.parent.with_suffix(".yaml").read_text()), yaml.safe_load(path.read_text())
    cfg = load_config(REPO / "config.yaml", deep_merge(base, raw))  # as `--configfile <base>.yaml <overlay>.yaml`
    assert cfg["experiment"] == raw["experiment"] != base["experiment"]  # its own results/ folder
    assert cfg["data"] == load_config(REPO / "config.yaml", base)["data"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate_and_name_their_experiment(path: Path):
    raw = yaml.safe_load(path.read_text())
    cfg = load_config(REPO / "config.yaml", raw)  # as Snakemake reads `--configfile path`: merged over config.yaml
    assert cfg["experiment"] == raw["experiment"]
    # defaults are filled for every section
    assert {"data", "subsets", "model", "train", "sample", "measure", "influence", "trak"} <= set(cfg)


def test_defaults_are_filled():
    cfg = validate_config({"experiment": "x"})
    assert cfg["data"]["source"] == "digits"
    assert cfg["subsets"]["fraction"] == 0.5
    assert cfg["influence"]["default_damping"] == 1e-8
    assert cfg["influence"]["variants"] == [{"fisher": "mc", "approx": "expand", "eigencorrection": False}]


def test_paper_settings_in_cifar_configs():
    c2 = load_config(REPO / "experiments/cifar2.yaml")
    assert c2["data"]["classes"] == ["automobile", "horse"] and c2["data"]["per_class"] == 2500
    assert c2["train"]["steps"] == 32000 and c2["train"]["subset_steps"] == 16000
    assert c2["subsets"]["n_subsets"] * c2["subsets"]["seeds_per_subset"] == 500
    assert c2["measure"]["mc_samples"] == 5000 and c2["sample"]["n_samples"] == 200
    assert c2["trak"]["projection_dim"] == 32768 and c2["influence"]["gradient_mc_samples"][0] == 250
    c10 = load_config(REPO / "experiments/cifar10.yaml")
    assert c10["data"]["classes"] is None and c10["train"]["steps"] == 160000


@pytest.mark.parametrize(
    "bad, key, allowed",
    [
        ({"data": {"clases": ["1"]}}, "'data'", "did you mean 'classes'"),
        ({"data": {"source": "cifar"}}, "'data.source'", "'digits', 'cifar10_python', 'image_folder'"),
        ({"subsets": {"fraction": 1.5}}, "'subsets.fraction'", "> 0 and < 1"),
        ({"train": {"steps": 0}}, "'train.steps'", ">= 1"),
        ({"influence": {"variants": [{"fisher": "exact"}]}}, "'influence.variants[0].fisher'", "'mc', 'empirical'"),
        ({"sampel": {}}, "'<top level>'", "did you mean 'sample'"),
        ({"data": {"source": "image_folder"}}, "'data.path'", "string"),
    ],
)
def test_invalid_keys_name_key_and_allowed_values(bad, key, allowed):
    with pytest.raises(ConfigError) as exc:
        validate_config({"experiment": "x", **bad}, source="my.yaml")
    msg = str(exc.value)
    assert "my.yaml" in msg and key in msg and allowed in msg, msg


def test_gradient_mc_samples_is_a_count_or_a_list_of_counts():
    from diffattr.config import gradient_mc_counts

    assert gradient_mc_counts(validate_config({"experiment": "x"})["influence"]) == [32]
    cfg = validate_config({"experiment": "x", "influence": {"gradient_mc_samples": [250, 10, 1000]}})
    assert gradient_mc_counts(cfg["influence"]) == [250, 10, 1000]
    for bad in ([], [8, 8], [0], "many"):
        with pytest.raises(ConfigError, match="'influence.gradient_mc_samples'"):
            validate_config({"experiment": "x", "influence": {"gradient_mc_samples": bad}})


def test_downweight_ablation_needs_the_timestep_matrix_and_existing_seeds():
    with pytest.raises(ConfigError) as exc:
        validate_config({"experiment": "x", "subsets": {"seeds_per_subset": 1},
                         "ablations": {"downweight": {"enabled": True, "seeds_per_subset": 2}}})
    assert "'ablations.downweight.seeds_per_subset': 2 exceeds subsets.seeds_per_subset=1" in str(exc.value)
    assert "needs evaluate.timestep_matrix: true" in str(exc.value)


def test_missing_experiment_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="'experiment' is a required property"):
        validate_config({})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at top level"):
        load_config(tmp_path / "list.yaml")


def test_overrides_deep_merge():
    cfg = load_config(REPO / "experiments/smoke.yaml", overrides={"data": {"per_class": 5}})
    assert cfg["data"]["per_class"] == 5 and cfg["data"]["classes"] == ["1", "7"]


def test_cross_key_consistency_errors_name_the_key():
    base = {"experiment": "x", "measure": {"measurements": ["loss"]}}
    with pytest.raises(ConfigError, match=r"'evaluate.pairs\[1\].target': 'elbo' is not measured"):
        validate_config(base)
    with pytest.raises(ConfigError, match=r"'evaluate.pairs\[0\].scores': 'trajectory' has no scores"):
        validate_config({**base, "evaluate": {"pairs": [{"scores": "trajectory", "target": "loss"}]}})
    with pytest.raises(ConfigError, match=r"'measure.timesteps'.*exceed diffusion.num_timesteps=100"):
        validate_config({"experiment": "x", "diffusion": {"num_timesteps": 100}})
    with pytest.raises(ConfigError, match=r"'evaluate.timestep_matrix': true needs timestep_loss in measure.measurements"):
        validate_config({"experiment": "x", "evaluate": {"timestep_matrix": True}})
    cfg = validate_config({"experiment": "x", "measure": {"timesteps": [1, 5], "measurements": ["loss", "elbo", "timestep_loss"]},
                           "evaluate": {"timestep_matrix": True},
                           "influence": {"measurements": ["loss", "elbo", "timestep_loss"]}})
    from diffattr.config import evaluation_pairs

    assert {"scores": "timestep_loss_t5", "target": "timestep_loss_t1"} in evaluation_pairs(cfg["evaluate"], cfg["measure"]["timesteps"])


def test_timestep_draw_counts_and_antithetic_timesteps_are_checked_against_the_timesteps():
    from diffattr.config import timestep_draw_counts

    def measure(**kw):
        return {"experiment": "x", "measure": {"timesteps": [1, 10, 100], **kw}}

    cfg = validate_config(measure(timestep_mc_samples=[4, 8, 16], timestep_antithetic=[1, 10]))
    assert timestep_draw_counts(cfg["measure"]) == [4, 8, 16]
    assert timestep_draw_counts(validate_config(measure(timestep_mc_samples=6))["measure"]) == [6, 6, 6]
    assert timestep_draw_counts(validate_config(measure(mc_samples=5))["measure"]) == [5, 5, 5]  # null: mc_samples
    with pytest.raises(ConfigError, match=r"'measure.timestep_mc_samples': 2 counts for the 3 measure.timesteps"):
        validate_config(measure(timestep_mc_samples=[4, 8]))
    with pytest.raises(ConfigError, match=r"'measure.timestep_antithetic': 50 is not one of measure.timesteps"):
        validate_config(measure(timestep_antithetic=[50]))
    with pytest.raises(ConfigError, match=r"'measure.timestep_antithetic': timestep 10 has an odd draw count \(7"):
        validate_config(measure(timestep_mc_samples=[4, 7, 16], timestep_antithetic=[10]))
    with pytest.raises(ConfigError, match=r"'measure.timestep_mc_samples\[1\]'"):
        validate_config(measure(timestep_mc_samples=[4, 0, 16]))


@pytest.mark.parametrize("section", ["influence", "trak"])
def test_default_damping_off_the_grid_is_rejected_at_parse_time(section):
    with pytest.raises(ConfigError, match=rf"'{section}.default_damping': 0.003 is not one of {section}.dampings"):
        validate_config({"experiment": "x", section: {"dampings": [1e-8, 1e-2], "default_damping": 3e-3}})
    validate_config({"experiment": "x", section: {"dampings": [1e-8, 3e-3], "default_damping": 3e-3}})
