# Data stage: the training set and the random subsets for LDS.


rule prepare_dataset:
    output:
        train=res("data/train.h5"),
    params:
        data=config["data"],
    log:
        logfile("prepare_dataset"),
    conda:
        ENV
    script:
        "../scripts/prepare_dataset.py"


rule make_subsets:
    input:
        train=res("data/train.h5"),
    output:
        subsets=res("data/subsets.h5"),
    params:
        subsets=config["subsets"],
    log:
        logfile("make_subsets"),
    conda:
        ENV
    script:
        "../scripts/make_subsets.py"
