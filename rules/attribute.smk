# diffattr attribute inside a study: the images of attribute.queries attributed to the training set.


rule attribute_queries:
    input:
        unpack(attribute_inputs),
    output:
        index=res("attributions/index.html"),
        scores=res("attributions/scores.csv"),
        summary=res("attributions/attribution.json"),
        pictures=[
            report(res(f"attributions/query_{i}.png"), caption="../report/attribution.rst", category="Attributions")
            for i in range(N_ATTRIBUTION_QUERIES)
        ],
    params:
        request={**config["attribute"], "queries": ATTRIBUTION_QUERIES},
        sections=attribution_sections(config, config["attribute"]["method"]),
        device=config["device"],
    threads: config["resources"]["threads"]
    resources:
        gpu=1 if N_ATTRIBUTION_QUERIES else 0,  # without queries it only writes an empty page
        mem_mb=config["resources"]["gpu_mem_mb"],
        runtime=config["resources"]["gpu_runtime"],
    log:
        logfile("attribute_queries"),
    benchmark:
        benchmark("attribute_queries")
    conda:
        ENV
    script:
        "../scripts/attribute_queries.py"
