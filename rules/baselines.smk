# Every registered method other than K-FAC (diffattr.scores.registry: TRAK, D-TRAK, gradient dot product, CLIP),
# one job per method, each given exactly the config values its registry entry declares.


rule compute_scores:
    input:
        unpack(lambda w: model_input(w.method)),
    output:
        scores=expand(res("scores/{{method}}/{query}.h5"), query=QUERIES),
    params:
        method="{method}",
        queries=QUERIES,
        args=lambda w: method_sections(config, w.method),
        device=config["device"],
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
        mem_mb=config["resources"]["gpu_mem_mb"],
        runtime=config["resources"]["gpu_runtime"],
    log:
        logfile("compute_scores/{method}"),
    benchmark:
        benchmark("compute_scores/{method}")
    conda:
        ENV
    script:
        "../scripts/compute_scores.py"
