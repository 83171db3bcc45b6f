"""Glue for rule select_counterfactuals."""

from diffattr.evaluate.counterfactual import select_removals
from diffattr.runtime import rule_context

smk = snakemake  # noqa: F821 (injected by Snakemake)
with rule_context(smk):
    select_removals(smk.config, smk.input.lds, list(smk.input.scores), smk.output.removals)
