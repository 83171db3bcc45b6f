"""Glue for rule train_model."""

from pathlib import Path

from diffattr.runtime import rule_context, select_device
from diffattr.train import train_model

smk = snakemake  # noqa: F821 (injected by Snakemake)
with rule_context(smk):
    train_model(
        smk.config,
        smk.wildcards.model,
        smk.input.train,
        smk.input.subsets,
        Path(smk.output.config).parent,
        smk.params.checkpoint,
        device=select_device(smk.config["device"]),
        removals_path=smk.input.get("removals"),
    )
