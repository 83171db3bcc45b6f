# Helpers, wildcard constraints and target functions (no rules here).

RESULTS = f"results/{config['experiment']}"
ENV = "../envs/diffattr.yaml"


def res(path):
    """Path of an artefact of this experiment: results/{experiment}/<path>."""
    return f"{RESULTS}/{path}"


def logfile(name):
    return f"{RESULTS}/logs/{name}.log"


wildcard_constraints:
    subset=r"\d+",
    seed=r"\d+",


def all_targets():
    """Everything `rule all` builds for the configured experiment."""
    return [res("data/train.h5"), res("data/subsets.h5")]
