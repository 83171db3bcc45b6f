"""Glue for rules compute_trak_scores and compute_dtrak_scores."""

from pathlib import Path

from diffattr.runtime import rule_context, select_device
from diffattr.scores.trak import compute_trak_scores

smk = snakemake  # noqa: F821 (injected by Snakemake)
with rule_context(smk):
    compute_trak_scores(
        smk.config,
        smk.params.method,
        Path(smk.input.model[0]).parent,
        smk.input.train,
        smk.input.samples,
        smk.params.out_dir,
        device=select_device(smk.config["device"]),
    )
