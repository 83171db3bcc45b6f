"""Glue for rule plot_figures."""

from pathlib import Path

from diffattr.plots.study import make_figures
from diffattr.runtime import rule_context

smk = snakemake  # noqa: F821 (injected by Snakemake)
with rule_context(smk):
    make_figures(smk.config, smk.input.lds, smk.input.train, smk.input.samples, smk.input.subsets,
                 smk.input.measurements, smk.input.kfac_loss, Path(smk.output.lds).parent)
