# Baselines: TRAK and D-TRAK (projected gradients, the K-FAC path's MC draws) and CLIP cosine similarity.


rule compute_trak_scores:
    input:
        model=model_files("full"),
        train=res("data/train.h5"),
        samples=res("samples/samples.h5"),
    output:
        scores=[res(f"scores/trak/{q}.h5") for q in QUERIES],
    params:
        method="trak",
        trak=config["trak"],
        influence=config["influence"],
        out_dir=lambda w, output: str(Path(output.scores[0]).parent.parent),
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
        mem_mb=config["resources"]["gpu_mem_mb"],
        runtime=config["resources"]["gpu_runtime"],
    log:
        logfile("compute_trak_scores"),
    benchmark:
        benchmark("compute_trak_scores")
    conda:
        ENV
    script:
        "../scripts/compute_trak_scores.py"


use rule compute_trak_scores as compute_dtrak_scores with:
    output:
        scores=[res(f"scores/dtrak/{q}.h5") for q in QUERIES],
    params:
        method="dtrak",
        trak=config["trak"],
        influence=config["influence"],
        out_dir=lambda w, output: str(Path(output.scores[0]).parent.parent),
    log:
        logfile("compute_dtrak_scores"),
    benchmark:
        benchmark("compute_dtrak_scores")


rule compute_clip_scores:
    input:
        train=res("data/train.h5"),
        samples=res("samples/samples.h5"),
    output:
        scores=[res(f"scores/clip/{q}.h5") for q in QUERIES],
    params:
        clip=config["clip"],
        out_dir=lambda w, output: str(Path(output.scores[0]).parent.parent),
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
        mem_mb=config["resources"]["gpu_mem_mb"],
        runtime=config["resources"]["gpu_runtime"],
    log:
        logfile("compute_clip_scores"),
    benchmark:
        benchmark("compute_clip_scores")
    conda:
        ENV
    script:
        "../scripts/compute_clip_scores.py"
