"""Rule attribute_queries: stage :func:`diffattr.stages.attribute.attribute_queries`."""

from diffattr.runtime import run_stage
from diffattr.stages.attribute import attribute_queries

run_stage(snakemake, attribute_queries)  # noqa: F821 (injected by Snakemake)
