"""Glue for rule compute_clip_scores."""

from diffattr.runtime import rule_context, select_device
from diffattr.scores.clip import compute_clip_scores

smk = snakemake  # noqa: F821 (injected by Snakemake)
with rule_context(smk):
    compute_clip_scores(smk.config, smk.input.train, smk.input.samples, smk.params.out_dir,
                        device=select_device(smk.config["device"]))
