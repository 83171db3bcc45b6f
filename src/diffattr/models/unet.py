"""U-Net presets.

``ddpm_cifar`` is the CIFAR-10 U-Net of Ho et al. (2020) used in the paper (38,306,691 parameters). The small
presets keep its structure (residual blocks with scale-shift time conditioning, a self-attention level, a
mid-block with attention, dropout) at a size that trains in seconds to minutes on a CPU.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel

PRESETS: dict[str, dict[str, Any]] = {
    "ddpm_cifar": dict(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=2,
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        dropout=0.1,
        resnet_time_scale_shift="scale_shift",
        norm_num_groups=32,
    ),
    # 8x8-16x16 inputs on a CPU: two resolutions, attention at the lower one and in the mid-block.
    "unet_small": dict(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=2,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        dropout=0.1,
        resnet_time_scale_shift="scale_shift",
        norm_num_groups=8,
        attention_head_dim=16,
    ),
}

# The quickstart's preset: unet_small with one layer per block and half the channels (190k parameters).
PRESETS["unet_tiny"] = {**PRESETS["unet_small"], "layers_per_block": 1, "block_out_channels": (16, 32)}


def build_unet(name: str, **overrides: Any) -> UNet2DModel:
    """Build a freshly initialised U-Net preset.

    Args:
        name: One of ``PRESETS``.
        **overrides: Replace preset entries, e.g. ``in_channels`` and ``sample_size`` of the data set.

    Returns:
        The model; it maps ``(x_t [B, C, H, W], t [B])`` to ``.sample`` ``[B, C, H, W]`` (predicted noise).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown U-Net preset {name!r}; available: {sorted(PRESETS)}")
    cfg = {**PRESETS[name], **overrides}
    if "in_channels" in overrides and "out_channels" not in overrides:
        cfg["out_channels"] = overrides["in_channels"]
    return UNet2DModel(**cfg)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def save_model(model: UNet2DModel, directory: str | Path) -> None:
    """Save with diffusers ``save_pretrained`` (safetensors + config.json).

    safetensors creates the weights file with mode 0600; it gets the mode of ``config.json`` (the process's umask,
    like every other artefact), so a results folder shared on a cluster file system is readable as a whole.
    """
    directory = Path(directory)
    model.save_pretrained(str(directory), safe_serialization=True)
    mode = stat.S_IMODE((directory / "config.json").stat().st_mode)
    for weights in directory.glob("*.safetensors"):
        weights.chmod(mode)


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> UNet2DModel:
    """Load a saved model in eval mode."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"no trained model in {directory} (config.json missing)")
    return UNet2DModel.from_pretrained(str(directory), low_cpu_mem_usage=False).to(device).eval()
