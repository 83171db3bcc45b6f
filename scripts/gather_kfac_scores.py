"""Rule gather_kfac_scores: stage :func:`diffattr.stages.influence.gather_kfac_scores`."""

from diffattr.runtime import run_stage
from diffattr.stages.influence import gather_kfac_scores

run_stage(snakemake, gather_kfac_scores)  # noqa: F821 (injected by Snakemake)
