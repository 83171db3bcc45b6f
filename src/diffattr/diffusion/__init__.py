"""DDPM: noise schedule, training loss, posterior and reverse-process Gaussians, ancestral sampling."""

from diffattr.diffusion.ddpm import Schedule, ddpm_loss, sample

__all__ = ["Schedule", "ddpm_loss", "sample"]
