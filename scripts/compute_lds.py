"""Rule compute_lds: stage :func:`diffattr.stages.evaluate.compute_lds`."""

from diffattr.runtime import run_stage
from diffattr.stages.evaluate import compute_lds

run_stage(snakemake, compute_lds)  # noqa: F821 (injected by Snakemake)
