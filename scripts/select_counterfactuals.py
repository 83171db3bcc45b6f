"""Rule select_counterfactuals: stage :func:`diffattr.stages.evaluate.select_counterfactuals`."""

from diffattr.runtime import run_stage
from diffattr.stages.evaluate import select_counterfactuals

run_stage(snakemake, select_counterfactuals)  # noqa: F821 (injected by Snakemake)
