# Training stage: the model on the full set and the retraining fleet (every subset x seed), then samples.


# full, cf<r> and downweight<m>_seed<k>: one model per job
rule train_model:
    input:
        unpack(train_inputs),
    output:
        config=res("models/{model}/config.json"),
        weights=res("models/{model}/diffusion_pytorch_model.safetensors"),
        loss=res("models/{model}/loss.csv"),
        info=res("models/{model}/train_info.json"),
    params:
        model_id="{model}",
        checkpoint=res("checkpoints/{model}.pt"),
        model=config["model"],
        train=config["train"],
        diffusion=config["diffusion"],
        downweight_factor=config["ablations"]["downweight"]["factor"],
        device=config["device"],
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
        mem_mb=config["resources"]["train_mem_mb"],
        runtime=config["resources"]["train_runtime"],
    priority: model_priority(FLEET_TRAINING)
    log:
        logfile("train_model/{model}"),
    benchmark:
        benchmark("train_model/{model}")
    conda:
        ENV
    script:
        "../scripts/train_model.py"


# The retraining fleet: the seeds of one subset in one job (one process start-up and data read for all of them)
rule train_subset:
    input:
        train=res("data/train.h5"),
        subsets=res("data/subsets.h5"),
    output:
        config=subset_model_files("config.json"),
        weights=subset_model_files("diffusion_pytorch_model.safetensors"),
        loss=subset_model_files("loss.csv"),
        info=subset_model_files("train_info.json"),
    params:
        model_ids=lambda w: subset_model_ids(w.subset),
        checkpoints=lambda w: [res(f"checkpoints/{m}.pt") for m in subset_model_ids(w.subset)],
        model=config["model"],
        train=config["train"],
        diffusion=config["diffusion"],
        device=config["device"],
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
        mem_mb=config["resources"]["train_mem_mb"],
        runtime=SEEDS * config["resources"]["train_runtime"],
    priority: FLEET_TRAINING
    log:
        logfile("train_subset/{subset}"),
    benchmark:
        benchmark("train_subset/{subset}")
    conda:
        ENV
    script:
        "../scripts/train_subset.py"


rule sample_images:
    input:
        model=model_files("full"),
    output:
        samples=res("samples/samples.h5"),
        grid=report(res("samples/samples.png"), caption="../report/samples.rst", category="Samples"),
    params:
        sample=config["sample"],
        diffusion=config["diffusion"],
        device=config["device"],
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
        mem_mb=config["resources"]["gpu_mem_mb"],
        runtime=config["resources"]["gpu_runtime"],
    priority: CRITICAL_PATH
    log:
        logfile("sample_images"),
    benchmark:
        benchmark("sample_images")
    conda:
        ENV
    script:
        "../scripts/sample_images.py"
