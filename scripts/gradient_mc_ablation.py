"""Rule gradient_mc_ablation: stage :func:`diffattr.stages.ablations.gradient_mc_ablation`."""

from diffattr.runtime import run_stage
from diffattr.stages.ablations import gradient_mc_ablation

run_stage(snakemake, gradient_mc_ablation)  # noqa: F821 (injected by Snakemake)
