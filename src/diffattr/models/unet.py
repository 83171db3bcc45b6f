"""U-Net presets.

``ddpm_cifar`` is the CIFAR-10 U-Net of Ho et al. (2020) used in the paper (38,306,691 parameters). The small
presets keep its structure (residual blocks with scale-shift time conditioning, a self-attention level, a
mid-block with attention, dropout) at a size that trains in seconds to minutes on a CPU.
"""

from __future__ import annotations

import contextlib
import stat
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel

from diffattr.io import ArtefactError, fix_hint

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

# experiments/cifar2-mini.yaml: the paper's U-Net shape at 32x32 with three resolutions, one layer per block and a
# quarter of its width, so that a GPU trains a fleet of them in minutes.
PRESETS["unet_cifar_small"] = {**PRESETS["ddpm_cifar"], "layers_per_block": 1, "block_out_channels": (64, 128, 128),
                               "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                               "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")}

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


def precision_context(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """The numerics of a job's U-Net passes (``train.precision``, ``measure.precision``).

    ``fp32``: strict float32. ``tf32``: TF32 matmuls and convolutions on CUDA (process-wide flags, set here; no
    effect on a CPU). ``bf16``: the returned context autocasts matmuls and convolutions to bfloat16 (weights stay
    float32; reductions that autocast keeps in float32 stay there).

    Args:
        precision: ``fp32``, ``tf32`` or ``bf16``.
        device_type: ``cuda`` or ``cpu`` (``torch.device.type``).
    """
    if precision not in ("fp32", "tf32", "bf16"):
        raise ValueError(f"precision must be fp32, tf32 or bf16, got {precision!r}")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    if precision == "bf16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# train.compile / measure.compile values that are torch.compile modes of inductor rather than backends
COMPILE_MODES = ("reduce-overhead",)


def compile_unet(model: torch.nn.Module, option: bool | str) -> torch.nn.Module:
    """``model`` compiled with ``torch.compile`` (``train.compile``, ``measure.compile``): ``True`` = inductor,
    ``"reduce-overhead"`` = inductor replaying CUDA graphs on a GPU (one launch for the whole forward or backward
    pass, where a small U-Net is otherwise bound by its thousands of kernel launches), another string = that
    backend, ``False`` = ``model`` itself. The compiled module shares ``model``'s parameters."""
    if not option:
        return model
    if option in COMPILE_MODES:
        return torch.compile(model, mode=option)
    return torch.compile(model, backend="inductor" if option is True else option)


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
        raise FileNotFoundError(f"no trained model in {directory} (config.json missing: save the UNet2DModel with "
                                "save_pretrained, or point at the 'unet' folder of a saved pipeline)")
    try:
        model = UNet2DModel.from_pretrained(str(directory), low_cpu_mem_usage=False)
    except Exception as exc:  # safetensors, JSON and OS errors of a truncated or foreign model directory
        raise ArtefactError(f"the model in {directory} is unreadable ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]}); {fix_hint(directory / 'config.json')}") from exc
    return model.to(device).eval()


def diffusion_settings(directory: str | Path) -> dict[str, Any]:
    """The noise schedule a saved model was trained with, as a ``diffusion`` config section.

    Read from a diffusers ``scheduler_config.json`` beside the weights (or in ``../scheduler/``, the layout of a saved
    ``DDPMPipeline``), else from our ``train_info.json``. Only linear-beta, ε-predicting DDPM schedules are supported.

    Raises:
        FileNotFoundError: Neither file is there (the message names both paths).
        ValueError: The scheduler is not a linear-beta ε-prediction DDPM.
    """
    import json

    directory = Path(directory)
    candidates = [directory / "scheduler_config.json", directory.parent / "scheduler" / "scheduler_config.json"]
    for path in candidates:
        if path.is_file():
            cfg = json.loads(path.read_text())
            schedule, prediction = cfg.get("beta_schedule", "linear"), cfg.get("prediction_type", "epsilon")
            if schedule != "linear" or prediction != "epsilon":
                raise ValueError(f"{path}: beta_schedule={schedule!r}, prediction_type={prediction!r}; diffattr supports "
                                 "linear betas with epsilon prediction (the paper's DDPM)")
            return {"num_timesteps": int(cfg.get("num_train_timesteps", 1000)),
                    "beta_start": float(cfg.get("beta_start", 1e-4)), "beta_end": float(cfg.get("beta_end", 0.02))}
    info = directory / "train_info.json"
    if info.is_file():
        return dict(json.loads(info.read_text())["diffusion"])
    raise FileNotFoundError(f"no noise schedule for the model in {directory}: expected {candidates[0]} (a diffusers "
                            f"scheduler config), {candidates[1]} or {info} (written by diffattr's train_model)")
