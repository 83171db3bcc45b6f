"""Glue for rule fit_curvature."""

from pathlib import Path

from diffattr.curvature import fit_curvature_stage
from diffattr.runtime import rule_context, select_device

smk = snakemake  # noqa: F821 (injected by Snakemake)
with rule_context(smk):
    fit_curvature_stage(
        smk.config,
        smk.wildcards.curvature,
        Path(smk.input.model[0]).parent,
        smk.input.train,
        smk.output.curvature,
        device=select_device(smk.config["device"]),
    )
