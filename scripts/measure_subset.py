"""Rule measure_subset: stage :func:`diffattr.stages.measure.measure_subset`."""

from diffattr.runtime import run_stage
from diffattr.stages.measure import measure_subset

run_stage(snakemake, measure_subset)  # noqa: F821 (injected by Snakemake)
