# Helpers, wildcard constraints and target functions (no rules here).

from diffattr.config import attribute_image_count, configured_variants
from diffattr.queries import query_names
from diffattr.scores.registry import (
    METHODS,
    attribution_sections,
    counterfactual_plan,
    evaluated_methods,
    method_sections,
)

RESULTS = f"results/{config['experiment']}"
ENV = "../envs/diffattr.yaml"


def res(path):
    """Path of an artefact of this experiment: results/{experiment}/<path>."""
    return f"{RESULTS}/{path}"


def logfile(name):
    return f"{RESULTS}/logs/{name}.log"


def benchmark(name):
    return f"{RESULTS}/benchmarks/{name}.tsv"


# Model ids: "full" (the whole training set) and "subset{m}_seed{k}" (subset m of subsets.h5, its k-th seed).
wildcard_constraints:
    model=r"full|subset\d+_seed\d+|cf\d+",
    curvature=r"e?kfac_(mc|empirical)_(expand|reduce)",
    method="|".join(METHODS),
    subset=r"\d+",
    seed=r"\d+",


SUBSET_MODELS = [
    f"subset{m}_seed{k}"
    for m in range(config["subsets"]["n_subsets"])
    for k in range(config["subsets"]["seeds_per_subset"])
]
ALL_MODELS = ["full", *SUBSET_MODELS]
CURVATURES = configured_variants(config)
QUERIES = query_names(config["influence"]["measurements"], config["measure"]["timesteps"])
MODEL_FILES = ["config.json", "diffusion_pytorch_model.safetensors", "loss.csv", "train_info.json"]


def model_files(model):
    """The files train_model writes for a model id."""
    return [res(f"models/{model}/{name}") for name in MODEL_FILES]


def all_targets():
    """Everything `rule all` builds for the configured experiment."""
    return [
        res("data/train.h5"),
        res("data/subsets.h5"),
        *[f for model in ALL_MODELS for f in model_files(model)],
        res("samples/samples.h5"),
        res("samples/samples.png"),
        res("measurements/measurements.h5"),
        *kfac_score_files(),
        *evaluated_score_files(),
        res("metrics/lds.json"),
        res("metrics/counterfactual.json"),
        *[res(f"figures/{name}.png") for name in FIGURE_NAMES],
        res("attributions/index.html"),
    ]


FIGURE_NAMES = ["lds", "damping", "hessian_ablation", "top_influences", "predicted_vs_actual", "counterfactual"]
if config["evaluate"]["timestep_matrix"]:
    FIGURE_NAMES.append("timestep_matrix")
CF_PLAN = counterfactual_plan(config)
CF_MODELS = [f"cf{r}" for r in range(len(CF_PLAN))]


def train_inputs(wildcards):
    """train_model's inputs: counterfactual runs also need the removal sets."""
    inputs = {"train": res("data/train.h5"), "subsets": res("data/subsets.h5")}
    if wildcards.model.startswith("cf"):
        inputs["removals"] = res("counterfactual/removals.h5")
    return inputs


def score_files(methods):
    """Score files of methods for every query: results/<exp>/scores/{method}/{query}.h5."""
    return [res(f"scores/{method}/{query}.h5") for method in methods for query in QUERIES]


def evaluated_score_files():
    """Score files of the methods listed in evaluate.methods (every K-FAC variant for kfac)."""
    return score_files(evaluated_methods(config))


def kfac_score_files():
    """Score files of every configured K-FAC variant and query."""
    return score_files(CURVATURES)


def model_input(method):
    """compute_scores' inputs: the full model for gradient methods, the images for the others."""
    inputs = {"train": res("data/train.h5"), "samples": res("samples/samples.h5")}
    if METHODS[method].needs_model:
        inputs["model"] = model_files("full")
    return inputs


N_ATTRIBUTION_QUERIES = attribute_image_count(config)
# "samples.h5:<i>" in attribute.queries means this study's own samples
ATTRIBUTION_QUERIES = [res(f"samples/{q}") if q.startswith("samples.h5") else q for q in config["attribute"]["queries"]]


def attribute_inputs(wildcards):
    """attribute_queries' inputs: the full model, the training set, the query files and, for a configured K-FAC
    variant, its fitted curvature (reused, not refitted)."""
    inputs = {"model": model_files("full"), "train": res("data/train.h5"),
              "queries": sorted({q.split(":", 1)[0] for q in ATTRIBUTION_QUERIES})}
    if N_ATTRIBUTION_QUERIES and config["attribute"]["method"] in CURVATURES:
        inputs["curvature"] = res(f"curvature/{config['attribute']['method']}.h5")
    return inputs
