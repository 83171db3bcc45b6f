"""Glue for rule evaluate_counterfactuals."""

from diffattr.evaluate.counterfactual import summarize_counterfactual
from diffattr.plots import figures
from diffattr.runtime import rule_context

smk = snakemake  # noqa: F821 (injected by Snakemake)
with rule_context(smk):
    summary = summarize_counterfactual(smk.input.removals, smk.input.full, list(smk.input.runs), smk.output.metrics)
    figures.counterfactual_bars(summary, smk.output.figure, smk.output.data)
