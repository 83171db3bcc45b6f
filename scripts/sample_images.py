"""Rule sample_images: stage :func:`diffattr.stages.train.sample_images`."""

from diffattr.runtime import run_stage
from diffattr.stages.train import sample_images

run_stage(snakemake, sample_images)  # noqa: F821 (injected by Snakemake)
