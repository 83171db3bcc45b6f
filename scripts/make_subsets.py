"""Rule make_subsets: stage :func:`diffattr.stages.data.make_subsets`."""

from diffattr.runtime import run_stage
from diffattr.stages.data import make_subsets

run_stage(snakemake, make_subsets)  # noqa: F821 (injected by Snakemake)
