"""U-Net presets (diffusers ``UNet2DModel``) and loading of trained models."""

from diffattr.models.unet import (
    PRESETS,
    build_unet,
    compile_unet,
    count_parameters,
    load_model,
    precision_context,
    save_model,
)

__all__ = ["PRESETS", "build_unet", "compile_unet", "count_parameters", "load_model", "precision_context", "save_model"]
