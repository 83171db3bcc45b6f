"""Rule measure_model: stage :func:`diffattr.stages.measure.measure_model`."""

from diffattr.runtime import run_stage
from diffattr.stages.measure import measure_model

run_stage(snakemake, measure_model)  # noqa: F821 (injected by Snakemake)
