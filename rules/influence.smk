# K-FAC influence: curvature per variant, then every variant x measurement scored in one pass over the data per
# range of the samples (influence.sample_shards), the ranges joined by gather_kfac_scores.

localrules:
    gather_kfac_scores,


rule fit_curvature:
    input:
        model=model_files("full"),
        train=res("data/train.h5"),
    output:
        curvature=res("curvature/{curvature}.h5"),
    params:
        variant="{curvature}",
        fit=CURVATURE_FIT,
        diffusion=config["diffusion"],
        hflip=config["train"]["hflip"],
        device=config["device"],
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
        mem_mb=config["resources"]["gpu_mem_mb"],
        runtime=config["resources"]["gpu_runtime"],
    priority: CRITICAL_PATH
    log:
        logfile("fit_curvature/{curvature}"),
    benchmark:
        benchmark("fit_curvature/{curvature}")
    conda:
        ENV
    script:
        "../scripts/fit_curvature.py"


rule compute_kfac_scores:
    input:
        model=model_files("full"),
        train=res("data/train.h5"),
        samples=res("samples/samples.h5"),
        curvatures=expand(res("curvature/{curvature}.h5"), curvature=CURVATURES),
    output:
        scores=kfac_shard_files("{shard}"),
    params:
        shard=lambda w: int(w.shard),
        queries=KFAC_QUERIES,
        influence=config["influence"],
        diffusion=config["diffusion"],
        hflip=config["train"]["hflip"],
        device=config["device"],
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
        mem_mb=config["resources"]["gpu_mem_mb"],
        runtime=config["resources"]["kfac_scores_runtime"],
    priority: CRITICAL_PATH
    log:
        logfile("compute_kfac_scores/{shard}"),
    benchmark:
        benchmark("compute_kfac_scores/{shard}")
    conda:
        ENV
    script:
        "../scripts/compute_kfac_scores.py"


rule gather_kfac_scores:
    input:
        shards=[f for k in range(SAMPLE_SHARDS) for f in kfac_shard_files(k)],
    output:
        scores=kfac_score_files(),
    priority: CRITICAL_PATH
    log:
        logfile("gather_kfac_scores"),
    conda:
        ENV
    script:
        "../scripts/gather_kfac_scores.py"


# Paper Figs. 7/9: the first K-FAC variant's scores again with another gradient MC count
# (influence.gradient_mc_samples[1:]), from the same fitted curvature.
rule compute_kfac_grad_scores:
    input:
        model=model_files("full"),
        train=res("data/train.h5"),
        samples=res("samples/samples.h5"),
        curvatures=[res(f"curvature/{CURVATURES[0]}.h5")],
    output:
        scores=[res(f"scores/{CURVATURES[0]}_grad{{mc}}/{q}.h5") for q in MC_QUERIES],
    params:
        mc_samples=lambda w: int(w.mc),
        queries=MC_QUERIES,
        influence=config["influence"],
        diffusion=config["diffusion"],
        hflip=config["train"]["hflip"],
        device=config["device"],
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
        mem_mb=config["resources"]["gpu_mem_mb"],
        runtime=config["resources"]["kfac_scores_runtime"],
    log:
        logfile("compute_kfac_grad_scores/{mc}"),
    benchmark:
        benchmark("compute_kfac_grad_scores/{mc}")
    conda:
        ENV
    script:
        "../scripts/compute_kfac_grad_scores.py"
