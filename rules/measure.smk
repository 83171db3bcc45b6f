# Measurement oracles: every generated sample measured under every model, then gathered.


# the full model and the runs of the other fleets, one per job
rule measure_model:
    input:
        model=model_files("{model}"),
        samples=res("samples/samples.h5"),
    output:
        measurements=res("measurements/models/{model}.h5"),
    params:
        model_id="{model}",
        measure=lambda w: model_measure(w.model),
        diffusion=config["diffusion"],
        device=config["device"],
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
        mem_mb=config["resources"]["gpu_mem_mb"],
        runtime=config["resources"]["measure_runtime"],
    priority: model_priority(0)
    log:
        logfile("measure_model/{model}"),
    benchmark:
        benchmark("measure_model/{model}")
    conda:
        ENV
    script:
        "../scripts/measure_model.py"


# the seeds of one retraining subset in one job
rule measure_subset:
    input:
        models=lambda w: [f for m in subset_model_ids(w.subset) for f in model_files(m)],
        samples=res("samples/samples.h5"),
    output:
        measurements=expand(res("measurements/models/subset{{subset}}_seed{k}.h5"), k=range(SEEDS)),
    params:
        model_ids=lambda w: subset_model_ids(w.subset),
        measure=lambda w: model_measure(f"subset{w.subset}_seed0"),
        diffusion=config["diffusion"],
        device=config["device"],
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
        mem_mb=config["resources"]["gpu_mem_mb"],
        runtime=SEEDS * config["resources"]["measure_runtime"],
    log:
        logfile("measure_subset/{subset}"),
    benchmark:
        benchmark("measure_subset/{subset}")
    conda:
        ENV
    script:
        "../scripts/measure_subset.py"


# every counterfactual run, on the samples it was retrained for, in one job (rules/evaluate.smk plans and reads them)
rule measure_counterfactuals:
    input:
        models=[f for m in CF_MODELS for f in model_files(m)],
        samples=res("samples/samples.h5"),
        removals=res("counterfactual/removals.h5"),
    output:
        measurements=res("measurements/counterfactual.h5"),
    params:
        model_ids=CF_MODELS,
        measure={**config["measure"], "measurements": ["loss"]},  # what evaluate_counterfactuals reads
        diffusion=config["diffusion"],
        device=config["device"],
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
        mem_mb=config["resources"]["gpu_mem_mb"],
        runtime=config["resources"]["measure_runtime"],
    log:
        logfile("measure_counterfactuals"),
    benchmark:
        benchmark("measure_counterfactuals")
    conda:
        ENV
    script:
        "../scripts/measure_counterfactuals.py"


# measurements.h5: the full model and the retraining fleet; downweight.h5: the down-weighted fleet (Figs. 13/14).
rule gather_measurements:
    input:
        measurements=lambda w: expand(res("measurements/models/{model}.h5"), model=FLEETS[w.fleet]),
    output:
        measurements=res("measurements/{fleet}.h5"),
    params:
        timesteps=config["measure"]["timesteps"],
    log:
        logfile("gather_measurements/{fleet}"),
    conda:
        ENV
    script:
        "../scripts/gather_measurements.py"
