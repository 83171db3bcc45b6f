"""Glue for rule prepare_dataset."""

from diffattr.data import prepare_dataset
from diffattr.runtime import rule_context

with rule_context(snakemake):  # noqa: F821 (injected by Snakemake)
    prepare_dataset(snakemake.params.data, snakemake.output.train)  # noqa: F821
