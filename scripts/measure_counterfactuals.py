"""Rule measure_counterfactuals: stage :func:`diffattr.stages.measure.measure_counterfactuals`."""

from diffattr.runtime import run_stage
from diffattr.stages.measure import measure_counterfactuals

run_stage(snakemake, measure_counterfactuals)  # noqa: F821 (injected by Snakemake)
