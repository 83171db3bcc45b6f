"""Glue for rule sample_images."""

from pathlib import Path

from diffattr.runtime import rule_context, select_device
from diffattr.sampling import sample_images

smk = snakemake  # noqa: F821 (injected by Snakemake)
with rule_context(smk):
    sample_images(
        smk.config,
        Path(smk.input.model[0]).parent,
        smk.output.samples,
        smk.output.grid,
        device=select_device(smk.config["device"]),
    )
