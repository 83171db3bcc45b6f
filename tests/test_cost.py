"""Cost estimate: job counts come from the real Snakemake dry run, GPU-hours from the unit-cost model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from diffattr.config import load_config
from diffattr.cost import (
    estimate,
    format_estimate,
    format_spent,
    job_seconds,
    kfac_bank,
    kfac_parameter_count,
    load_reference,
    n_train,
    spent,
)
from tests.conftest import REPO

REF = {"preset": "ddpm_cifar", "device": "test", "torch": "x", "date": "today", "train_batch": 128,
       "train_step_s": {"fp32": 0.2, "tf32": 0.1, "bf16": 0.05}, "forward_s_per_image": 1e-4,
       "gradient_s_per_example_draw": 2e-3, "kfac_fit_expand_s_per_example_draw": 3e-3,
       "kfac_fit_reduce_s_per_example_draw": 1e-3, "kfac_eig_expand_s": 3.0, "kfac_eig_reduce_s": 2.0,
       "projection_dim": 32768, "project_batch": 32, "project_s_per_gradient": 1e-2,
       "forward_s_per_image_at": {"bf16": 5e-5},
       "assumed": {"source": {"train_step_s": "a test", "kfac_rotate_s_per_gradient": "another test",
                              "forward_s_per_image_at": "a third test"},
                   "train_step_s": {"bf16+compile": 0.025}, "kfac_rotate_s_per_gradient": 0.01,
                   "forward_s_per_image_at": {"bf16+compile": 2.5e-5}}}


def test_cifar2_estimate_counts_the_dag_and_prices_each_rule():
    est = estimate(REPO / "experiments/cifar2.yaml", REF, REPO / "Snakefile")
    rules = est["rules"]
    assert est["n_train"] == 5000
    # the full model, 32 counterfactual runs and 100 down-weighted models (Figs. 13/14) one per job, but the
    # counterfactual runs measured in one; the 100 subsets' 5 seeds one job per subset
    assert rules["train_model"]["jobs"] == 133 and rules["measure_model"]["jobs"] == 101
    assert rules["measure_counterfactuals"]["jobs"] == 1
    assert rules["train_subset"]["jobs"] == 100 and rules["measure_subset"]["jobs"] == 100
    assert rules["fit_curvature"]["jobs"] == 4 and "all" not in rules
    assert not rules["compute_lds"]["gpu"] and rules["compute_scores:clip"]["gpu"]
    # training: full, 32 counterfactual and 100 down-weighted runs at 32k steps, 500 subset runs at 16k, in
    # bf16 + compile, whose step time is an assumed one (0.025 s here), and said so
    assert rules["train_model"]["gpu_hours"] == pytest.approx(133 * 32000 * 0.025 / 3600)
    assert rules["train_subset"]["max_job_hours"] == pytest.approx(5 * 16000 * 0.025 / 3600)
    assert rules["train_subset"]["gpu_hours"] == pytest.approx(500 * 16000 * 0.025 / 3600)
    assert est["assumed_unit_costs"] == ["train_step_s[bf16+compile] = 0.025",
                                         "forward_s_per_image_at[bf16+compile] = 2.5e-05",
                                         "kfac_rotate_s_per_gradient = 0.01"]
    assert "not measured by bench/unit_costs.py on a GPU yet: train_step_s[bf16+compile] = 0.025 (a test)" in \
        format_estimate(est)
    assert "kfac_rotate_s_per_gradient = 0.01 (another test)" in format_estimate(est)
    # measurement, 200 samples each: the full model and the fleet (501) everything (5000 loss/ELBO draws,
    # 7 timesteps x 1000, 1000 trajectory steps), the down-weighted (100) the timestep losses; the counterfactual
    # runs the loss on their own sample (30 methods' runs: 5 samples x 3 methods x 2 fractions) or on those 5
    # (2 random runs); every forward pass in bf16 + compile (measure.precision/compile), an assumed unit cost
    full, down, fwd = 5000 + 7000 + 1000, 100 * 7000, 2.5e-5
    assert rules["measure_model"]["gpu_hours"] == pytest.approx(200 * (full + down) * fwd / 3600)
    assert rules["measure_counterfactuals"]["gpu_hours"] == pytest.approx((30 + 2 * 5) * 5000 * fwd / 3600)
    assert rules["measure_subset"]["gpu_hours"] == pytest.approx(200 * 500 * full * fwd / 3600)
    assert rules["measure_subset"]["max_job_hours"] == pytest.approx(200 * 5 * full * fwd / 3600)
    assert est["timestep_oracles"]["gpu_hours"] == pytest.approx(601 * 200 * 7000 * fwd / 3600)
    assert rules["sample_images"]["gpu_hours"] == pytest.approx(200 * 1000 * 1e-4 / 3600)  # the sampler: fp32
    assert est["total_gpu_hours"] == pytest.approx(sum(r["gpu_hours"] for r in rules.values()))
    # K-FAC scores in 2 ranges of 100 samples: each int8 eigenbasis bank holds the first variant's 10 queries (loss,
    # elbo, trajectory, 7 timestep losses) and the other three variants' loss and elbo, one row of P bytes (plus a
    # float32 scale per 256) each for all 10 dampings: 62 GB, one pass over the training set per job, each
    # training gradient rotated into the 4 variants' eigenbases
    P = kfac_parameter_count("ddpm_cifar")
    assert est["kfac_bank"]["gigabytes"] == pytest.approx((10 + 3 * 2) * 100 * (P + 4 * -(-P // 256)) / 1e9)
    assert est["kfac_bank"]["passes"] == 1
    assert rules["compute_kfac_scores"]["jobs"] == 2
    assert rules["compute_kfac_scores"]["gpu_hours"] == pytest.approx(
        (2 * 5000 * 250 + 10 * 200 * 250) * 2e-3 / 3600 + 2 * 5000 * 4 * 0.01 / 3600)
    # TRAK features: 2 ranges of 2500 examples for each of the two gradient outputs, 20 projector calls each
    assert rules["compute_features"]["jobs"] == 4
    assert rules["compute_features"]["max_job_hours"] == pytest.approx((2500 * 250 * 2e-3 + 20 * 0.32) / 3600)
    # Fig. 7: one more pass per extra gradient count (25 and 100), for the loss, ELBO and trajectory queries
    assert rules["compute_kfac_grad_scores"]["jobs"] == 2
    assert rules["compute_kfac_grad_scores"]["gpu_hours"] == pytest.approx(
        sum(5000 * n + 200 * 3 * n for n in (25, 100)) * 2e-3 / 3600 + 2 * 5000 * 4 * 0.01 / 3600)
    assert rules["compression_ablation"]["gpu"] and rules["compute_scores:trak_fp16"]["gpu"]
    table = format_estimate(est)
    assert "train_model" in table and "reference: test" in table and "passes over" not in table
    assert "7 timesteps x 1000 draws each" in table and "longest job:" in table


def test_an_overlay_is_merged_over_its_experiment_as_snakemake_merges_it():
    """experiments/cifar2/headline.yaml: cifar2 without the timestep oracles and the down-weighted retraining."""
    full = estimate(REPO / "experiments/cifar2.yaml", REF, REPO / "Snakefile")
    head = estimate([REPO / "experiments/cifar2.yaml", REPO / "experiments/cifar2/headline.yaml"], REF,
                    REPO / "Snakefile")
    assert head["experiment"] == "cifar2-headline" and head["n_train"] == 5000
    assert head["timestep_oracles"]["gpu_hours"] == 0 and "downweight_ablation" not in head["rules"]
    assert head["rules"]["train_model"]["jobs"] == 33  # the full model and 32 counterfactual runs
    assert head["rules"]["train_subset"] == full["rules"]["train_subset"]  # the same fleet
    measure = 200 * (5000 + 1000) * 2.5e-5 / 3600  # loss/ELBO draws and trajectory steps of one model (bf16+compile)
    assert head["rules"]["measure_subset"]["gpu_hours"] == pytest.approx(500 * measure)
    assert head["total_gpu_hours"] < full["total_gpu_hours"] - full["timestep_oracles"]["gpu_hours"]


def test_timestep_oracles_are_priced_at_their_draws_per_timestep(tmp_path):
    """measure.timestep_mc_samples as one count per timestep: the timestep oracles cost the sum of the counts."""
    overlay = tmp_path / "counts.yaml"
    overlay.write_text("measure: {timestep_mc_samples: [100, 100, 400, 1000, 1000, 1000, 1000], "
                       "timestep_antithetic: [1, 10, 50]}\n")
    base = estimate([REPO / "experiments/cifar2.yaml"], REF, REPO / "Snakefile")
    est = estimate([REPO / "experiments/cifar2.yaml", overlay], REF, REPO / "Snakefile")
    assert est["timestep_oracles"]["gpu_hours"] == pytest.approx(4600 / 7000 * base["timestep_oracles"]["gpu_hours"])
    assert est["timestep_oracles"]["draws_per_timestep"] == [100, 100, 400, 1000, 1000, 1000, 1000]
    assert "7 timesteps x 100/100/400/1000/1000/1000/1000 draws" in format_estimate(est)
    saved = base["timestep_oracles"]["gpu_hours"] - est["timestep_oracles"]["gpu_hours"]
    assert est["total_gpu_hours"] == pytest.approx(base["total_gpu_hours"] - saved)


@pytest.mark.parametrize("compiled", [False, True])
def test_oracles_are_priced_at_their_precision_measured_or_assumed(tmp_path, compiled):
    """measure.precision/measure.compile price every oracle forward pass (not the sampler's) at that setting's unit
    cost; an assumed one is said so."""
    overlay = tmp_path / "oracle_precision.yaml"
    overlay.write_text("measure: {precision: fp32, compile: false}\n")
    base = estimate([REPO / "experiments/cifar2.yaml", overlay], REF, REPO / "Snakefile")
    overlay.write_text(f"measure: {{precision: bf16, compile: {str(compiled).lower()}}}\n")
    est = estimate([REPO / "experiments/cifar2.yaml", overlay], REF, REPO / "Snakefile")
    ratio = (2.5e-5 if compiled else 5e-5) / 1e-4
    for rule in ("measure_model", "measure_subset"):
        assert est["rules"][rule]["gpu_hours"] == pytest.approx(ratio * base["rules"][rule]["gpu_hours"])
    assert est["timestep_oracles"]["gpu_hours"] == pytest.approx(ratio * base["timestep_oracles"]["gpu_hours"])
    assert est["rules"]["sample_images"] == base["rules"]["sample_images"]
    note = "forward_s_per_image_at[bf16+compile] = 2.5e-05"
    assert (note in est["assumed_unit_costs"]) == compiled
    assert (f"{note} (a third test)" in format_estimate(est)) == compiled
    assert not any("forward" in a for a in base["assumed_unit_costs"])
    overlay.write_text("measure: {precision: tf32, compile: false}\n")
    with pytest.raises(ValueError, match="forward_s_per_image_at: 'tf32' has no reference unit cost"):
        estimate([REPO / "experiments/cifar2.yaml", overlay], REF, REPO / "Snakefile")


def test_the_bank_note_says_how_many_sample_shards_make_one_pass():
    cfg = load_config(REPO / "experiments/cifar2.yaml")
    cfg["influence"]["sample_shards"] = 1
    P = kfac_parameter_count("ddpm_cifar")
    assert kfac_bank(cfg, P)[1] == 2  # the 2 shards' banks, in one job
    cfg["influence"]["query_bank"] = "per_damping"  # one row per damping: ten times the bytes
    assert kfac_bank(cfg, P)[1] == 19
    assert kfac_bank(cfg, P)[0] == pytest.approx(10 * (10 + 3 * 2) * 200 * P)


def test_the_bank_note_offers_the_eigenbasis_bank_to_a_per_damping_bank_that_needs_passes(tmp_path):
    overlay = tmp_path / "per_damping.yaml"
    overlay.write_text("influence: {query_bank: per_damping}\n")
    est = estimate([REPO / "experiments/cifar2.yaml", overlay], REF, REPO / "Snakefile")
    bank = est["kfac_bank"]
    assert bank["passes"] == 10 and bank["gigabytes"] == pytest.approx(10 * bank["eigenbasis_gigabytes"], rel=0.02)
    assert (f"each job makes 10 passes over the training set; influence.sample_shards = 20 (or more memory) makes "
            f"it one, or influence.query_bank: eigenbasis ({bank['eigenbasis_gigabytes']:.0f} GB)") in format_estimate(est)
    assert est["rules"]["compute_kfac_scores"]["gpu_hours"] > 9 * 2 * 5000 * 250 * 2e-3 / 3600


def test_kfac_bank_fits_in_one_pass_with_enough_memory():
    cfg = load_config(REPO / "experiments/cifar2.yaml")
    cfg["influence"]["bank_memory_mb"] = 10**6
    assert kfac_bank(cfg, 1000)[1] == 1
    int8 = kfac_bank(cfg, 1000)[0]
    cfg["influence"]["query_compression"] = "none"  # float32 rows: four bytes per entry, no scales
    assert kfac_bank(cfg, 1000)[0] / int8 == pytest.approx(4 * 1000 / (1000 + 4 * 4))


def test_ekfac_adds_a_gradient_pass_and_cpu_rules_are_not_priced():
    cfg = load_config(REPO / "experiments/cifar2.yaml")
    kfac = job_seconds("fit_curvature", {"curvature": "kfac_mc_expand"}, cfg, REF)
    ekfac = job_seconds("fit_curvature", {"curvature": "ekfac_mc_expand"}, cfg, REF)
    assert kfac == pytest.approx(5000 * 250 * 3e-3 + 3.0)
    assert ekfac - kfac == pytest.approx(5000 * 250 * 2e-3)
    assert job_seconds("compute_lds", {}, cfg, REF) is None


def test_reference_mismatch_and_unknown_size_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="model.preset is 'unet_tiny'"):
        estimate(REPO / "experiments/smoke.yaml", REF, REPO / "Snakefile")
    assert n_train({"data": {"source": "image_folder", "classes": None, "per_class": None}}) is None


def test_a_reference_cut_short_is_refused_naming_what_it_lacks(tmp_path):
    """bench/unit_costs.py writes its JSON after every measurement: a run stopped at its time limit leaves a file
    with the first units only, which the estimate refuses by name rather than failing on a KeyError."""
    partial = {k: v for k, v in load_reference().items() if k in ("preset", "train_batch", "train_step_s")}
    path = tmp_path / "units.json"
    path.write_text(json.dumps(partial))
    with pytest.raises(ValueError, match=f"{path} has no forward_s_per_image, gradient_s_per_example_draw, "):
        load_reference(path)
    proc = subprocess.run([sys.executable, "-m", "diffattr.cost", "experiments/cifar2.yaml", "--reference", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("diffattr.cost: ") and "Traceback" not in proc.stderr
    assert "projection_dim: bench/unit_costs.py stopped before measuring them" in proc.stderr


def test_shipped_reference_is_complete():
    ref = load_reference()
    assert set(REF) - {"forward_s_per_image_at"} <= set(ref) and ref["preset"] == "ddpm_cifar"
    assert {"fp32", "tf32", "bf16"} <= set(ref["train_step_s"])
    # every schema setting of train/measure precision and compile has a unit cost, measured or assumed
    for table in ("train_step_s", "forward_s_per_image_at"):
        priced = set(ref.get(table, {})) | set(ref["assumed"].get(table, {}))
        assert {"tf32", "bf16", "bf16+compile"} <= priced, table
        assert not ref["assumed"].get(table) or table in ref["assumed"]["source"]  # an assumption says its source


@pytest.mark.parametrize("experiment", ["cifar2", "cifar10", "cifar2 cifar2/headline"])
def test_paper_configs_request_enough_wall_time_for_their_estimated_jobs(experiment):
    est = estimate([REPO / f"experiments/{e}.yaml" for e in experiment.split()], load_reference(), REPO / "Snakefile")
    for rule, r in est["rules"].items():
        if r["gpu"]:
            assert r["max_job_hours"] <= r["runtime_limit_hours"], (rule, r)


def test_a_registered_method_is_priced_from_its_registry_entry():
    """graddot needs no cost code of its own: one gradient pass over the training set plus the query gradients;
    TRAK's training side is priced in compute_features, its scoring job projects the query gradients only."""
    cfg = load_config(REPO / "experiments/cifar2.yaml")
    query_draws = 200 * 10 * 250  # samples x (loss, elbo, trajectory, 7 timestep losses) x gradient draws
    assert job_seconds("compute_scores", {"method": "graddot"}, cfg, REF) == pytest.approx(
        (5000 * 250 + query_draws) * 2e-3)
    assert job_seconds("compute_scores", {"method": "trak"}, cfg, REF) == pytest.approx(
        query_draws * 2e-3 + 10 * 0.32)  # plus one projector call per query set


BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write_benchmark(path, *rows):
    """A Snakemake ``benchmark:`` file: one row (wall s, max RSS MB, CPU s) per repeat."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BENCH_HEADER + "".join(f"{s}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t90\t{cpu}\n" for s, rss, cpu in rows))


def test_spent_sums_the_benchmark_files_by_rule(tmp_path):
    bench = tmp_path / "results/x/benchmarks"
    write_benchmark(bench / "train_model/full.tsv", (40.0, 600.0, 39.0))
    for r, s in enumerate((30.0, 34.0)):
        write_benchmark(bench / f"train_model/cf{r}.tsv", (s, 500.0, s - 1))
    write_benchmark(bench / "train_subset/0.tsv", (80.0, 610.0, 79.0))
    write_benchmark(bench / "train_subset/11.tsv", (70.0, "NA", 69.0))
    write_benchmark(bench / "sample_images.tsv", (10.0, 400.0, 9.0), (12.0, 420.0, 11.0))  # two repeats: the mean
    run = spent(tmp_path / "results/x")
    assert run["jobs"] == 6 and run["seconds"] == pytest.approx(40 + 30 + 34 + 80 + 70 + 11)
    tm = run["rules"]["train_model"]
    assert (tm["jobs"], tm["seconds"], tm["max_s"], tm["max_rss_mb"], tm["kinds"]) == \
        (3, 104.0, 40.0, 600.0, {"cf#": 2, "full": 1})
    ts = run["rules"]["train_subset"]
    assert (ts["jobs"], ts["max_rss_mb"], ts["cpu_s"], ts["kinds"]) == (2, 610.0, 148.0, {"#": 2})
    assert run["rules"]["sample_images"] == {"jobs": 1, "seconds": 11.0, "max_s": 11.0, "max_rss_mb": 420.0,
                                             "cpu_s": 10.0, "kinds": {"-": 1}}
    table = format_spent(run).splitlines()
    assert table[0].startswith(f"{tmp_path / 'results/x'}: 6 jobs, 265 job-seconds (4.4 min")
    assert table[2].split()[:3] == ["train_subset", "2", "150.0"]  # the largest first
    assert table[3].endswith("cf# x2, full x1") and table[2].endswith("610")  # one number per job: no kinds


def test_spent_refuses_a_run_without_benchmarks(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path / 'benchmarks'}: no benchmark files"):
        spent(tmp_path)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks/odd.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="odd.tsv: not a Snakemake benchmark file"):
        spent(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "diffattr.cost", "--spent", str(tmp_path / "none")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("diffattr.cost: ") and "no benchmark files" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "diffattr.cost"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "or --spent RESULTS" in proc.stderr
