# Training stage: the model on the full set and the retraining fleet (every subset x seed), then samples.


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
    log:
        logfile("train_model/{model}"),
    benchmark:
        benchmark("train_model/{model}")
    conda:
        ENV
    script:
        "../scripts/train_model.py"


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
    log:
        logfile("sample_images"),
    benchmark:
        benchmark("sample_images")
    conda:
        ENV
    script:
        "../scripts/sample_images.py"
