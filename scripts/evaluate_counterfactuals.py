"""Rule evaluate_counterfactuals: stage :func:`diffattr.stages.evaluate.evaluate_counterfactuals`."""

from diffattr.runtime import run_stage
from diffattr.stages.evaluate import evaluate_counterfactuals

run_stage(snakemake, evaluate_counterfactuals)  # noqa: F821 (injected by Snakemake)
