"""Glue for rule gather_measurements."""

from diffattr.measure import gather_measurements
from diffattr.runtime import rule_context

smk = snakemake  # noqa: F821 (injected by Snakemake)
with rule_context(smk):
    gather_measurements(smk.config, list(smk.input.measurements), smk.output.measurements)
