"""Rule compute_features: stage :func:`diffattr.stages.baselines.compute_features`."""

from diffattr.runtime import run_stage
from diffattr.stages.baselines import compute_features

run_stage(snakemake, compute_features)  # noqa: F821 (injected by Snakemake)
