"""Rule compression_ablation: stage :func:`diffattr.stages.ablations.compression_ablation`."""

from diffattr.runtime import run_stage
from diffattr.stages.ablations import compression_ablation

run_stage(snakemake, compression_ablation)  # noqa: F821 (injected by Snakemake)
