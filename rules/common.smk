# Helpers, wildcard constraints and target functions (no rules here).

from diffattr.config import attribute_image_count, configured_variants, gradient_mc_counts, kfac_queries, \
    model_measurements
from diffattr.queries import query_names
from diffattr.scores.registry import (
    METHODS,
    attribution_sections,
    counterfactual_methods,
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


# Priority of the jobs between the full model and the counterfactual evaluation (full model, samples, curvature,
# scores, counterfactual retraining): the study's longest chain. Without it Snakemake trains the subset fleet first
# and the chain runs alone at the end (quickstart: the full model started after 7 of its 16 subset jobs).
CRITICAL_PATH = 10
# The fleet's trainings go before its measurements (which wait on them): otherwise Snakemake measures the subsets
# already trained and reaches the last training late, and it and its measurement run alone at the end (quickstart:
# about 115 s with one of the two cores idle).
FLEET_TRAINING = 1


def model_priority(fleet):
    """Priority of a {model} job (train_model, measure_model): the full model and the counterfactual runs are on
    the chain; the down-weighted fleet (ablations, Figs. 13/14) is a fleet like the subsets' and gets ``fleet``."""
    return lambda wildcards: fleet if wildcards.model.startswith("downweight") else CRITICAL_PATH


# Model ids: "full" (the whole training set), "subset{m}_seed{k}" (subset m of subsets.h5, its k-th seed),
# "downweight{m}_seed{k}" (all data, the examples outside subset m down-weighted) and "cf{r}" (counterfactual run r).
wildcard_constraints:
    model=r"full|downweight\d+_seed\d+|cf\d+",  # {model} jobs: one model each; subsets' seeds go by {subset}
    fleet=r"measurements|downweight",
    mc=r"\d+",
    curvature=r"e?kfac_(mc|empirical)_(expand|reduce)",
    shard=r"\d+",
    gradient_output=r"loss|square_norm",
    method="|".join(METHODS),
    subset=r"\d+",
    seed=r"\d+",


SEEDS = config["subsets"]["seeds_per_subset"]
SUBSET_MODELS = [f"subset{m}_seed{k}" for m in range(config["subsets"]["n_subsets"]) for k in range(SEEDS)]
ALL_MODELS = ["full", *SUBSET_MODELS]
DOWNWEIGHT = config["ablations"]["downweight"]
DOWNWEIGHT_MODELS = [
    f"downweight{m}_seed{k}"
    for m in range(config["subsets"]["n_subsets"])
    for k in range(DOWNWEIGHT["seeds_per_subset"])
] if DOWNWEIGHT["enabled"] else []
FLEETS = {"measurements": ALL_MODELS, "downweight": DOWNWEIGHT_MODELS}
CURVATURES = configured_variants(config)
QUERIES = query_names(config["influence"]["measurements"], config["measure"]["timesteps"])
TIMESTEP_QUERIES = [q for q in QUERIES if q.startswith("timestep_loss")]
# what fit_curvature reads of influence (so that new queries or gradient counts never refit the curvature)
CURVATURE_FIT = {k: config["influence"][k] for k in ("curvature_mc_samples", "batch_size", "seed")}
GRADIENT_MC = gradient_mc_counts(config["influence"])  # Figs. 7/9: K-FAC scores again for GRADIENT_MC[1:]
MC_QUERIES = [q for q in QUERIES if q not in TIMESTEP_QUERIES]
# query names per K-FAC variant: the first scores every query, the others influence.variant_measurements (Fig. 4)
KFAC_QUERIES = kfac_queries(config)
SAMPLE_SHARDS = config["influence"]["sample_shards"]  # compute_kfac_scores jobs, over ranges of the samples
FEATURE_SHARDS = config["trak"]["feature_shards"]  # compute_features jobs per output, over the training examples
MODEL_FILES = ["config.json", "diffusion_pytorch_model.safetensors", "loss.csv", "train_info.json"]


def model_files(model):
    """The files train_model (train_subset for subset<m>_seed<k>) writes for a model id."""
    return [res(f"models/{model}/{name}") for name in MODEL_FILES]


def subset_model_ids(subset):
    """The model ids of one retraining subset's seeds."""
    return [f"subset{subset}_seed{k}" for k in range(SEEDS)]


def subset_model_files(name):
    """Output pattern of train_subset: file ``name`` of every seed's model of subset {subset}."""
    return expand(res("models/subset{{subset}}_seed{k}/{name}"), k=range(SEEDS), name=name)


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
        *[res(f"figures/{name}.{ext}") for name in FIGURE_NAMES for ext in ("png", "csv")],
        *[res(f"metrics/{name}.json") for name in ABLATION_METRICS],
        res("attributions/index.html"),
    ]


TIMESTEPS_ON = bool(config["evaluate"]["timestep_matrix"])  # Figs. 11, 12 and 16: the timestep losses
ELBO_ON = "elbo" in config["measure"]["measurements"]  # Fig. 17
# plot_figures (attribution), plot_measurement_figures (the measurements alone), evaluate_counterfactuals
ATTRIBUTION_FIGURES = ["lds", "damping", "hessian_ablation", "top_influences", "predicted_vs_actual",
                       *(["timestep_matrix", "predicted_vs_actual_timesteps"] if TIMESTEPS_ON else [])]
MEASUREMENT_FIGURES = ["elbo_weighting", *(["elbo_pairs"] if ELBO_ON else []),
                       *(["timestep_retraining"] if TIMESTEPS_ON else [])]
TRAJECTORY_ON = any(p["target"] == "trajectory" for p in config["evaluate"]["pairs"])  # Fig. 19
FP16_ON = "trak_fp16" in config["evaluate"]["methods"]  # Fig. 20
ATTRIBUTION_FIGURES += [*(["lds_trajectory"] if TRAJECTORY_ON else []), *(["damping_fp16"] if FP16_ON else [])]
# rules/ablations.smk: Figs. 7/9 (several gradient MC counts), 6 (compression), 13/14 (down-weighting)
ABLATION_FIGURES = {
    "gradient_mc": ["damping_gradient_mc"] if len(GRADIENT_MC) > 1 else [],
    "compression": ["compression"] if config["ablations"]["compression"]["enabled"] else [],
    "downweight": ["downweight_timestep_matrix", "downweight_retraining"] if DOWNWEIGHT["enabled"] else [],
}
ABLATION_METRICS = [name for name, figures in ABLATION_FIGURES.items() if figures]
FIGURE_NAMES = [*ATTRIBUTION_FIGURES, *MEASUREMENT_FIGURES, *sum(ABLATION_FIGURES.values(), []), "counterfactual"]
CF_PLAN = counterfactual_plan(config)
CF_MODELS = [f"cf{r}" for r in range(len(CF_PLAN))]


def model_measure(model):
    """The measure section for one model, with only the measurements something reads from it."""
    return {**config["measure"], "measurements": model_measurements(config, model)}


def train_inputs(wildcards):
    """train_model's inputs: counterfactual runs also need the removal sets."""
    inputs = {"train": res("data/train.h5"), "subsets": res("data/subsets.h5")}
    if wildcards.model.startswith("cf"):
        inputs["removals"] = res("counterfactual/removals.h5")
    return inputs


def score_files(methods):
    """Score files of methods for their queries (KFAC_QUERIES for a K-FAC variant, else every query):
    results/<exp>/scores/{method}/{query}.h5."""
    return [res(f"scores/{method}/{query}.h5") for method in methods for query in KFAC_QUERIES.get(method, QUERIES)]


def evaluated_score_files():
    """Score files of the methods listed in evaluate.methods (every K-FAC variant for kfac)."""
    return score_files(evaluated_methods(config))


def kfac_score_files():
    """Score files of every configured K-FAC variant and query."""
    return score_files(CURVATURES)


def kfac_mc_score_files(mc, variants=None):
    """K-FAC scores with ``mc`` gradient MC draws (Figs. 7/9): scores/{variant}_grad{mc}/{query}.h5, the loss-like
    queries only; the first count's are the study's own scores/{variant}/{query}.h5."""
    suffix = "" if int(mc) == GRADIENT_MC[0] else f"_grad{mc}"
    return [res(f"scores/{v}{suffix}/{q}.h5") for v in (variants or CURVATURES) for q in MC_QUERIES]


def kfac_shard_files(shard):
    """The score files compute_kfac_scores writes for one range of the samples."""
    return [res(f"shards/kfac/{shard}/{v}/{q}.h5") for v, qs in KFAC_QUERIES.items() for q in qs]


def feature_files(output):
    """The training-feature shards of a gradient output (compute_features)."""
    return [res(f"shards/features/{output}/{k}.h5") for k in range(FEATURE_SHARDS)]


def model_input(method):
    """compute_scores' inputs: the full model for gradient methods (and the training features of those that have
    them), the images for the others."""
    inputs = {"train": res("data/train.h5"), "samples": res("samples/samples.h5")}
    if METHODS[method].needs_model:
        inputs["model"] = model_files("full")
    if METHODS[method].features:
        inputs["features"] = feature_files(METHODS[method].features)
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
