"""Rule plot_figures: stage :func:`diffattr.stages.evaluate.plot_figures`."""

from diffattr.runtime import run_stage
from diffattr.stages.evaluate import plot_figures

run_stage(snakemake, plot_figures)  # noqa: F821 (injected by Snakemake)
