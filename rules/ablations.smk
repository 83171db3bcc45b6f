# The paper's ablations (config section `ablations`, and a list in influence.gradient_mc_samples):
# damping curves per gradient MC count (Figs. 7/9), gradient compression (Fig. 6), down-weighting (Figs. 13/14).


rule gradient_mc_ablation:
    input:
        scores=[f for mc in GRADIENT_MC for f in kfac_mc_score_files(mc, CURVATURES[:1])],
        measurements=res("measurements/measurements.h5"),
        subsets=res("data/subsets.h5"),
    output:
        metrics=res("metrics/gradient_mc.json"),
        figure=report(res("figures/damping_gradient_mc.png"), caption="../report/damping_gradient_mc.rst", category="Ablations"),
        data=res("figures/damping_gradient_mc.csv"),
    params:
        pairs=[p for p in config["evaluate"]["pairs"] if p["scores"] in MC_QUERIES],
    log:
        logfile("gradient_mc_ablation"),
    conda:
        ENV
    script:
        "../scripts/gradient_mc_ablation.py"


rule compression_ablation:
    input:
        model=model_files("full"),
        train=res("data/train.h5"),
        samples=res("samples/samples.h5"),
        curvature=res(f"curvature/{CURVATURES[0]}.h5"),
        measurements=res("measurements/measurements.h5"),
        subsets=res("data/subsets.h5"),
    output:
        metrics=res("metrics/compression.json"),
        figure=report(res("figures/compression.png"), caption="../report/compression.rst", category="Ablations"),
        data=res("figures/compression.csv"),
    params:
        compression=config["ablations"]["compression"],
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
        logfile("compression_ablation"),
    benchmark:
        benchmark("compression_ablation")
    conda:
        ENV
    script:
        "../scripts/compression_ablation.py"


rule downweight_ablation:
    input:
        downweight=res("measurements/downweight.h5"),
        subsets=res("data/subsets.h5"),
        scores=[res(f"scores/{CURVATURES[0]}/{q}.h5") for q in TIMESTEP_QUERIES],
    output:
        metrics=res("metrics/downweight.json"),
        matrix=report(res("figures/downweight_timestep_matrix.png"), caption="../report/downweight_timestep_matrix.rst",
                      category="Ablations"),
        retraining=report(res("figures/downweight_retraining.png"), caption="../report/downweight_retraining.rst",
                          category="Ablations"),
        data=[res("figures/downweight_timestep_matrix.csv"), res("figures/downweight_retraining.csv")],
    params:
        timesteps=config["measure"]["timesteps"],
        factor=DOWNWEIGHT["factor"],
    log:
        logfile("downweight_ablation"),
    conda:
        ENV
    script:
        "../scripts/downweight_ablation.py"
