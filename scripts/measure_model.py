"""Glue for rule measure_model."""

from pathlib import Path

from diffattr.measure import measure_model
from diffattr.runtime import rule_context, select_device

smk = snakemake  # noqa: F821 (injected by Snakemake)
with rule_context(smk):
    measure_model(
        smk.config,
        Path(smk.input.model[0]).parent,
        smk.input.samples,
        smk.output.measurements,
        device=select_device(smk.config["device"]),
    )
