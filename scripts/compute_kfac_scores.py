"""Glue for rule compute_kfac_scores."""

from pathlib import Path

from diffattr.runtime import rule_context, select_device
from diffattr.scores.influence import compute_kfac_scores

smk = snakemake  # noqa: F821 (injected by Snakemake)
with rule_context(smk):
    compute_kfac_scores(
        smk.config,
        Path(smk.input.model[0]).parent,
        smk.input.train,
        smk.input.samples,
        list(smk.input.curvatures),
        smk.params.out_dir,
        device=select_device(smk.config["device"]),
    )
