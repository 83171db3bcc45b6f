"""Rule compute_kfac_grad_scores: stage :func:`diffattr.stages.influence.compute_kfac_grad_scores`."""

from diffattr.runtime import run_stage
from diffattr.stages.influence import compute_kfac_grad_scores

run_stage(snakemake, compute_kfac_grad_scores)  # noqa: F821 (injected by Snakemake)
