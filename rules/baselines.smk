# Every registered method other than K-FAC (diffattr.scores.registry: TRAK, D-TRAK, gradient dot product, CLIP),
# one job per method, each given exactly the config values its registry entry declares. TRAK's training features
# come from compute_features, over ranges of the training examples (trak.feature_shards), shared by the methods
# that project the same gradient output (TRAK and TRAK float16).


rule compute_features:
    input:
        model=model_files("full"),
        train=res("data/train.h5"),
        samples=res("samples/samples.h5"),
    output:
        features=res("shards/features/{gradient_output}/{shard}.h5"),
    params:
        gradient_output="{gradient_output}",
        shard=lambda w: int(w.shard),
        args=method_sections(config, "trak"),
        device=config["device"],
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
        mem_mb=config["resources"]["gpu_mem_mb"],
        runtime=config["resources"]["gpu_runtime"],
    priority: CRITICAL_PATH
    log:
        logfile("compute_features/{gradient_output}_{shard}"),
    benchmark:
        benchmark("compute_features/{gradient_output}_{shard}")
    conda:
        ENV
    script:
        "../scripts/compute_features.py"


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
    priority: CRITICAL_PATH
    log:
        logfile("compute_scores/{method}"),
    benchmark:
        benchmark("compute_scores/{method}")
    conda:
        ENV
    script:
        "../scripts/compute_scores.py"
