"""Glue for rule compute_lds."""

from diffattr.evaluate.study import compute_lds
from diffattr.runtime import rule_context

smk = snakemake  # noqa: F821 (injected by Snakemake)
with rule_context(smk):
    compute_lds(smk.config, smk.input.measurements, smk.input.subsets, list(smk.input.scores),
                smk.output.lds, smk.output.per_sample)
