"""Rule train_subset: stage :func:`diffattr.stages.train.train_subset`."""

from diffattr.runtime import run_stage
from diffattr.stages.train import train_subset

run_stage(snakemake, train_subset)  # noqa: F821 (injected by Snakemake)
