"""Rule gather_measurements: stage :func:`diffattr.stages.measure.gather_measurements`."""

from diffattr.runtime import run_stage
from diffattr.stages.measure import gather_measurements

run_stage(snakemake, gather_measurements)  # noqa: F821 (injected by Snakemake)
