"""Rule downweight_ablation: stage :func:`diffattr.stages.ablations.downweight_ablation`."""

from diffattr.runtime import run_stage
from diffattr.stages.ablations import downweight_ablation

run_stage(snakemake, downweight_ablation)  # noqa: F821 (injected by Snakemake)
