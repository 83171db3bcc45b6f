"""Rule fit_curvature: stage :func:`diffattr.stages.influence.fit_curvature`."""

from diffattr.runtime import run_stage
from diffattr.stages.influence import fit_curvature

run_stage(snakemake, fit_curvature)  # noqa: F821 (injected by Snakemake)
