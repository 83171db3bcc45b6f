# Evaluation: LDS of every method, the figures (attribution, measurements) and the counterfactual retraining.


rule compute_lds:
    input:
        measurements=res("measurements/measurements.h5"),
        subsets=res("data/subsets.h5"),
        scores=evaluated_score_files(),
    output:
        lds=res("metrics/lds.json"),
        per_sample=res("metrics/lds_per_sample.csv"),
    params:
        experiment=config["experiment"],
        evaluate=config["evaluate"],
        timesteps=config["measure"]["timesteps"],
    log:
        logfile("compute_lds"),
    conda:
        ENV
    script:
        "../scripts/compute_lds.py"


rule plot_figures:
    input:
        lds=res("metrics/lds.json"),
        train=res("data/train.h5"),
        samples=res("samples/samples.h5"),
        subsets=res("data/subsets.h5"),
        measurements=res("measurements/measurements.h5"),
        kfac_loss=res(f"scores/{CURVATURES[0]}/loss.h5"),
        kfac_timesteps=[res(f"scores/{CURVATURES[0]}/{q}.h5") for q in QUERIES if TIMESTEPS_ON and "timestep" in q],
    output:
        lds=report(res("figures/lds.png"), caption="../report/lds.rst", category="LDS"),
        damping=report(res("figures/damping.png"), caption="../report/damping.rst", category="LDS"),
        hessian=report(res("figures/hessian_ablation.png"), caption="../report/hessian_ablation.rst", category="LDS"),
        top=report(res("figures/top_influences.png"), caption="../report/top_influences.rst", category="Attributions"),
        scatter=report(res("figures/predicted_vs_actual.png"), caption="../report/predicted_vs_actual.rst", category="Attributions"),
        timesteps=[
            report(res("figures/timestep_matrix.png"), caption="../report/timestep_matrix.rst", category="Timestep losses")
            for _ in range(int(TIMESTEPS_ON))
        ],
        timestep_scatter=[
            report(res("figures/predicted_vs_actual_timesteps.png"), caption="../report/predicted_vs_actual_timesteps.rst",
                   category="Timestep losses")
            for _ in range(int(TIMESTEPS_ON))
        ],
        trajectory=[
            report(res("figures/lds_trajectory.png"), caption="../report/lds_trajectory.rst", category="LDS")
            for _ in range(int(TRAJECTORY_ON))
        ],
        fp16=[
            report(res("figures/damping_fp16.png"), caption="../report/damping_fp16.rst", category="LDS")
            for _ in range(int(FP16_ON))
        ],
        data=[res(f"figures/{name}.csv") for name in ATTRIBUTION_FIGURES],
    params:
        evaluate=config["evaluate"],
    log:
        logfile("plot_figures"),
    conda:
        ENV
    script:
        "../scripts/plot_figures.py"


rule plot_measurement_figures:
    input:
        measurements=res("measurements/measurements.h5"),
        subsets=res("data/subsets.h5"),
    output:
        weighting=report(res("figures/elbo_weighting.png"), caption="../report/elbo_weighting.rst", category="Measurements"),
        elbo_pairs=[
            report(res("figures/elbo_pairs.png"), caption="../report/elbo_pairs.rst", category="Measurements")
            for _ in range(int(ELBO_ON))
        ],
        retraining=[
            report(res("figures/timestep_retraining.png"), caption="../report/timestep_retraining.rst",
                   category="Timestep losses")
            for _ in range(int(TIMESTEPS_ON))
        ],
        data=[res(f"figures/{name}.csv") for name in MEASUREMENT_FIGURES],
    params:
        timesteps=config["measure"]["timesteps"],
        diffusion=config["diffusion"],
    log:
        logfile("plot_measurement_figures"),
    conda:
        ENV
    script:
        "../scripts/plot_measurement_figures.py"


rule select_counterfactuals:
    input:
        lds=res("metrics/lds.json"),
        scores=[res(f"scores/{m}/loss.h5") for m in counterfactual_methods(config)],
    output:
        removals=res("counterfactual/removals.h5"),
    params:
        plan=CF_PLAN,
    priority: CRITICAL_PATH
    log:
        logfile("select_counterfactuals"),
    conda:
        ENV
    script:
        "../scripts/select_counterfactuals.py"


rule evaluate_counterfactuals:
    input:
        removals=res("counterfactual/removals.h5"),
        full=res("measurements/models/full.h5"),
        runs=res("measurements/counterfactual.h5"),
    output:
        metrics=res("metrics/counterfactual.json"),
        figure=report(res("figures/counterfactual.png"), caption="../report/counterfactual.rst", category="Counterfactual"),
        data=res("figures/counterfactual.csv"),
    log:
        logfile("evaluate_counterfactuals"),
    conda:
        ENV
    script:
        "../scripts/evaluate_counterfactuals.py"
