"""Rule prepare_dataset: stage :func:`diffattr.stages.data.prepare_dataset`."""

from diffattr.runtime import run_stage
from diffattr.stages.data import prepare_dataset

run_stage(snakemake, prepare_dataset)  # noqa: F821 (injected by Snakemake)
