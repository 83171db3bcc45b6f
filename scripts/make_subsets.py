"""Glue for rule make_subsets."""

from diffattr.data import make_subsets
from diffattr.runtime import rule_context

with rule_context(snakemake):  # noqa: F821 (injected by Snakemake)
    make_subsets(snakemake.params.subsets, snakemake.input.train, snakemake.output.subsets)  # noqa: F821
