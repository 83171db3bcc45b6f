"""Rule compute_scores: stage :func:`diffattr.stages.baselines.compute_scores`."""

from diffattr.runtime import run_stage
from diffattr.stages.baselines import compute_scores

run_stage(snakemake, compute_scores)  # noqa: F821 (injected by Snakemake)
