"""Artefacts of the whole smoke study, run once through real Snakemake (fixture ``smoke_study``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from diffattr.config import configured_variants, load_config
from diffattr.models import load_model
from diffattr.sampling import read_samples
from tests.conftest import REPO

SMOKE = load_config(REPO / "experiments/smoke.yaml")
M, K = SMOKE["subsets"]["n_subsets"], SMOKE["subsets"]["seeds_per_subset"]


def test_trains_full_model_and_fleet(smoke_study):
    models = sorted(p.name for p in (smoke_study / "models").iterdir() if not p.name.startswith(("cf", "downweight")))
    assert len(models) == 1 + M * K
    assert models == sorted(["full", *[f"subset{m}_seed{k}" for m in range(M) for k in range(K)]])
    # the down-weighted fleet of the Figs. 13/14 ablation (checked in test_smoke_figures.py)
    assert sorted(p.name for p in (smoke_study / "models").iterdir() if p.name.startswith("downweight")) == \
        [f"downweight{m}_seed0" for m in range(M)]
    info = json.loads((smoke_study / "models/subset1_seed0/train_info.json").read_text())
    assert info["steps"] == SMOKE["train"]["subset_steps"] and info["n_train"] == 20 and info["subset"] == 1
    loss = (smoke_study / "models/full/loss.csv").read_text().splitlines()
    assert loss[0] == "step,loss,lr" and len(loss) == 1 + SMOKE["train"]["steps"]
    assert load_model(smoke_study / "models/full").config.sample_size == 8
    assert not any((smoke_study / "checkpoints").glob("*.pt"))  # removed once a model is saved
    assert (smoke_study / "benchmarks/train_model/full.tsv").is_file()
    assert "saved" in (smoke_study / "logs/train_model/full.log").read_text()


def test_samples_from_full_model(smoke_study):
    art = read_samples(smoke_study / "samples/samples.h5")
    s = SMOKE["sample"]["n_samples"]
    assert art["samples"].shape == (s, 1, 8, 8) and art["images"].dtype == np.uint8
    traj = art["trajectories"]
    assert traj.shape == (s, SMOKE["diffusion"]["num_timesteps"] + 1, 1, 8, 8)
    np.testing.assert_array_equal(traj[:, 0], art["x_T"])
    np.testing.assert_array_equal(traj[:, -1], art["samples"])
    with Image.open(smoke_study / "samples/samples.png") as im:
        assert im.width > 8 and im.height > 8


def test_measurements_for_every_model(smoke_study):
    from diffattr.measure import read_measurements

    art = read_measurements(smoke_study / "measurements/measurements.h5")
    n_models, s = 1 + M * K, SMOKE["sample"]["n_samples"]
    for name in ("loss", "elbo", "trajectory"):
        assert art[name].shape == (n_models, s) and np.isfinite(art[name]).all()
    assert art["timestep_loss"].shape == (n_models, s, len(SMOKE["measure"]["timesteps"]))
    assert list(art["model_id"]) == ["full", *[f"subset{m}_seed{k}" for m in range(M) for k in range(K)]]
    assert art["subset"][0] == -1 and sorted(set(art["subset"][1:])) == list(range(M))
    assert len(set(art["seed"][1:])) == M * K


def test_kfac_scores_for_every_variant_and_its_measurements(smoke_study):
    """The first variant scores every query, the others influence.variant_measurements (config.kfac_queries)."""
    from diffattr.config import kfac_queries
    from diffattr.curvature import load_curvature
    from diffattr.scores import read_scores

    icfg = SMOKE["influence"]
    names = configured_variants(SMOKE)
    n_train = 2 * SMOKE["data"]["per_class"]
    for name in names:
        curv = load_curvature(smoke_study / f"curvature/{name}.h5")
        assert curv.args["mc_samples"] == icfg["curvature_mc_samples"] and curv.variant.name == name
        for measurement in kfac_queries(SMOKE)[name]:
            art = read_scores(smoke_study / f"scores/{name}/{measurement}.h5")
            assert art["scores"].shape == (len(icfg["dampings"]), SMOKE["sample"]["n_samples"], n_train)
            assert art["scores"].dtype == np.float32 and np.isfinite(art["scores"]).all()
            assert art.attrs["method"] == name and art.attrs["measurement"] == measurement
            np.testing.assert_allclose(art["dampings"], icfg["dampings"])


def test_kfac_scores_in_several_bank_passes_equal_the_pipeline_scores(smoke_study, tmp_path, caplog):
    """A query bank larger than influence.bank_memory_mb is scored in passes; the scores do not change."""
    from diffattr.config import kfac_queries
    from diffattr.scores import read_scores
    from diffattr.stages.influence import compute_kfac_scores
    from tests.conftest import paths

    names = configured_variants(SMOKE)
    queries = kfac_queries(SMOKE)
    influence = {**SMOKE["influence"], "bank_memory_mb": 1, "sample_shards": 1}  # about one sample per pass
    compute_kfac_scores(
        paths(model=[smoke_study / "models/full/config.json"], train=smoke_study / "data/train.h5",
              samples=smoke_study / "samples/samples.h5", curvatures=[smoke_study / f"curvature/{n}.h5" for n in names]),
        paths(scores=[tmp_path / n / f"{q}.h5" for n in names for q in queries[n]]), shard=0,
        queries=queries, influence=influence, diffusion=SMOKE["diffusion"], hflip=SMOKE["train"]["hflip"], device="cpu")
    assert "passes over the training set" in caplog.text
    for name in names:
        for path in (smoke_study / f"scores/{name}").glob("*.h5"):
            want, got = read_scores(path)["scores"], read_scores(tmp_path / name / path.name)
            assert json.loads(got.attrs["timings"])["passes"] > 1
            # Same draws and maths; only float32 rounding differs (other batch shapes), which int8 rounding and
            # λ = 1e-8 amplify to about 1e-3 of the largest score. Wrong draws or misplaced samples move scores
            # by tens of per cent.
            np.testing.assert_allclose(got["scores"], want, rtol=0, atol=1e-2 * np.abs(want).max())
            rho = [spearmanr(g, w).statistic for g, w in zip(got["scores"].reshape(-1, want.shape[-1]),
                                                             want.reshape(-1, want.shape[-1]), strict=True)]
            assert min(rho) > 0.99, (path, min(rho))


def test_an_eigenbasis_bank_scores_like_float32_rows_with_one_row_per_query(smoke_study, tmp_path, caplog):
    """influence.query_bank: eigenbasis (the paper configs) through the stage: a bank of one int8 row per (variant,
    query, sample) instead of one per damping, with scores as close to unquantised float32 rows as the
    per-damping int8 bank's, or closer (λ = 1e-8 on this 40-image model is where int8 rounding shows)."""
    import logging
    import re

    from diffattr.config import kfac_queries
    from diffattr.scores import read_scores
    from diffattr.stages.influence import compute_kfac_scores
    from tests.conftest import paths

    names = configured_variants(SMOKE)
    queries = kfac_queries(SMOKE)
    rows = {}
    runs = {"exact": ("per_damping", "none"), "per_damping": ("per_damping", "int8"), "eigenbasis": ("eigenbasis", "int8")}
    for run, (bank, compression) in runs.items():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="diffattr.scores.base"):
            compute_kfac_scores(
                paths(model=[smoke_study / "models/full/config.json"], train=smoke_study / "data/train.h5",
                      samples=smoke_study / "samples/samples.h5",
                      curvatures=[smoke_study / f"curvature/{n}.h5" for n in names]),
                paths(scores=[tmp_path / run / n / f"{q}.h5" for n in names for q in queries[n]]), shard=0,
                queries=queries, influence={**SMOKE["influence"], "sample_shards": 1, "query_bank": bank,
                                            "query_compression": compression},
                diffusion=SMOKE["diffusion"], hflip=SMOKE["train"]["hflip"], device="cpu")
        rows[run] = int(re.search(r"query bank of (\d+) rows", caplog.text).group(1))
    assert rows["per_damping"] == len(SMOKE["influence"]["dampings"]) * rows["eigenbasis"]
    for name in names:
        for q in queries[name]:
            want = read_scores(tmp_path / "exact" / name / f"{q}.h5")["scores"]
            art = read_scores(tmp_path / "eigenbasis" / name / f"{q}.h5")
            assert json.loads(art.attrs["args"])["query_bank"] == "eigenbasis"
            got, per_damping = art["scores"], read_scores(tmp_path / "per_damping" / name / f"{q}.h5")["scores"]
            assert got.shape == want.shape and np.isfinite(got).all()
            for d in range(want.shape[0]):
                err = np.abs(got[d] - want[d]).max() / np.abs(want[d]).max()
                assert err <= max(2e-2, np.abs(per_damping[d] - want[d]).max() / np.abs(want[d]).max()), (name, q, d)
                assert min(spearmanr(g, w).statistic for g, w in zip(got[d], want[d], strict=True)) > 0.99


def test_lds_metrics_and_figures(smoke_study):
    summary = json.loads((smoke_study / "metrics/lds.json").read_text())
    assert summary["n_subsets"] == M and summary["seeds_per_subset"] == K and summary["n_train"] == 40
    methods = {r["method"] for r in summary["results"]}
    assert {"trak", "dtrak", "trak_fp16", "graddot", "kfac_mc_expand", "kfac_empirical_reduce"} == methods
    pairs = {(r["scores"], r["target"]) for r in summary["results"]}
    assert ("loss", "elbo") in pairs  # the measurement-loss substitution
    assert ("timestep_loss_t1", "timestep_loss_t900") in pairs  # the timestep matrix
    for r in summary["results"]:
        assert len(r["lds_mean"]) == len(r["dampings"])
        finite = [m for m in r["lds_mean"] if m is not None]
        assert r["best"]["mean"] == max(finite) and r["lds_mean"].index(r["best"]["mean"]) == \
            r["dampings"].index(r["best"]["damping"])
    assert {"loss", "elbo", "timestep_loss_t1"} <= set(summary["oracle"])
    for name in ("lds", "damping", "hessian_ablation", "top_influences", "predicted_vs_actual", "timestep_matrix"):
        png = smoke_study / f"figures/{name}.png"
        with Image.open(png) as im:
            assert im.width > 100 and im.height > 100
        assert len((smoke_study / f"figures/{name}.csv").read_text().splitlines()) > 1


def test_substituted_pairs_are_oriented(smoke_study):
    """Loss scores against the ELBO, and D-TRAK's square-norm scores against the ELBO, are flipped (loss ≈ -ELBO)."""
    from diffattr.data import read_subsets
    from diffattr.evaluate import actual_by_subset, lds
    from diffattr.measure import read_measurements, relative_sign
    from diffattr.scores import read_scores

    summary = json.loads((smoke_study / "metrics/lds.json").read_text())
    for r in summary["results"]:
        assert r["sign"] == relative_sign(r["predicts"], r["target"])
    got = {(r["method"], r["scores"], r["target"]): r for r in summary["results"]}
    assert got[("kfac_mc_expand", "loss", "elbo")]["sign"] == -1
    assert got[("dtrak", "elbo", "elbo")]["predicts"] == "square_norm" and got[("dtrak", "elbo", "elbo")]["sign"] == -1
    assert got[("kfac_mc_expand", "elbo", "elbo")]["sign"] == 1
    meas, masks = read_measurements(smoke_study / "measurements/measurements.h5"), read_subsets(smoke_study / "data/subsets.h5")["masks"]
    actual = actual_by_subset(meas["elbo"], meas["subset"], meas["seed_index"], M)
    for method, scored in (("kfac_mc_expand", "loss"), ("dtrak", "elbo")):
        scores = read_scores(smoke_study / f"scores/{method}/{scored}.h5")["scores"]
        want = [lds(-scores[d], masks, actual).mean for d in range(scores.shape[0])]
        np.testing.assert_allclose(got[(method, scored, "elbo")]["lds_mean"], want)


def test_report_builds(smoke_study):
    from tests.conftest import run_snakemake

    wd = smoke_study.parent.parent
    run_snakemake(wd, "--cores", "1", "--configfile", "experiments/smoke.yaml", "--report", "report.html")
    html = (wd / "report.html").read_text(errors="ignore")
    assert "Linear data-modelling score" in html and len(html) > 10_000


def test_counterfactual_retraining(smoke_study):
    from diffattr.io import read_h5
    from diffattr.scores.registry import counterfactual_plan

    plan = counterfactual_plan(SMOKE)
    rem = read_h5(smoke_study / "counterfactual/removals.h5")
    assert rem["masks"].shape == (len(plan), 40)
    assert ((~rem["masks"]).sum(1) == 4).all()  # ceil(10% of 40)
    info = json.loads((smoke_study / "models/cf1/train_info.json").read_text())
    assert info["removal"] == 1 and info["n_train"] == 36 and info["steps"] == SMOKE["train"]["steps"]
    summary = json.loads((smoke_study / "metrics/counterfactual.json").read_text())
    assert {r["method"] for r in summary["runs"]} == {p["method"] for p in plan}
    assert all(np.isfinite(r["change"]) for r in summary["runs"])
    with Image.open(smoke_study / "figures/counterfactual.png") as im:
        assert im.width > 100


def test_attribute_queries_rule_reuses_the_study_and_matches_its_scores(smoke_study):
    """attribute_queries (diffattr attribute inside the study) on samples 0 and 2: the study's K-FAC scores."""
    import csv

    from diffattr.scores import read_scores

    out = smoke_study / "attributions"
    summary = json.loads((out / "attribution.json").read_text())
    assert summary["curvature_file"].endswith("curvature/kfac_mc_expand.h5") and summary["cache"] is None
    assert [r["query"] for r in summary["results"]] == ["samples.h5:0", "samples.h5:2"]
    art = read_scores(smoke_study / "scores/kfac_mc_expand/loss.h5")
    d = int(np.argmin(np.abs(np.log(art["dampings"]) - np.log(art.attrs["default_damping"]))))
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for q, sample in (("samples.h5:0", 0), ("samples.h5:2", 2)):
        got = np.zeros(40)
        for r in rows:
            if r["query"] == q:
                got[int(r["train_index"])] = float(r["score"])
        want = art["scores"][d, sample]
        # the study scored 3 samples in one batch, the rule 2: float32 rounding moves through the int8 compression
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-3 * np.abs(want).max())
        assert spearmanr(got, want).statistic > 0.999
    for i in range(2):
        with Image.open(out / f"query_{i}.png") as im:
            assert im.width > 100


def test_what_the_run_spent_is_set_beside_its_estimate(smoke_study):
    """`python -m diffattr.cost --spent` reads every benchmark file of the run; with the experiment's config it
    prices the same rules (the whole study: the dry run forces every job, also after the run)."""
    from diffattr.cost import estimate, format_spent, spent
    from tests.test_cost import REF

    files = sorted((smoke_study / "benchmarks").rglob("*.tsv"))
    run = spent(smoke_study)
    assert run["jobs"] == len(files) and run["rules"]["train_subset"]["jobs"] == M
    assert run["seconds"] == pytest.approx(sum(float(f.read_text().splitlines()[1].split("\t")[0]) for f in files))
    assert run["rules"]["train_model"]["kinds"]["full"] == 1
    est = estimate(smoke_study.parents[1] / "experiments/smoke.yaml", {**REF, "preset": "unet_tiny"},
                   smoke_study.parents[1] / "Snakefile")
    assert est["rules"]["train_subset"]["jobs"] == M  # the finished study's jobs all counted
    table = {line.split()[0]: line.split() for line in format_spent(run, est).splitlines()[2:]}
    step = REF["train_step_s"][SMOKE["train"]["precision"]] * SMOKE["train"]["batch_size"] / REF["train_batch"]
    priced = M * K * SMOKE["train"]["subset_steps"] * step  # the reference's step, scaled to the smoke batch
    assert float(table["train_subset"][7]) == pytest.approx(priced, abs=0.05)
    assert set(table) == set(run["rules"])  # every benchmarked rule is a GPU rule, priced by the estimate
    assert all(float(row[7]) >= 0 for row in table.values())
