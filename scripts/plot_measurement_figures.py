"""Rule plot_measurement_figures: stage :func:`diffattr.stages.evaluate.plot_measurement_figures`."""

from diffattr.runtime import run_stage
from diffattr.stages.evaluate import plot_measurement_figures

run_stage(snakemake, plot_measurement_figures)  # noqa: F821 (injected by Snakemake)
