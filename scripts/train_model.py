"""Rule train_model: stage :func:`diffattr.stages.train.train_model`."""

from diffattr.runtime import run_stage
from diffattr.stages.train import train_model

run_stage(snakemake, train_model)  # noqa: F821 (injected by Snakemake)
