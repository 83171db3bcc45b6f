import pytest
import torch

from diffattr.models import PRESETS, build_unet, count_parameters, load_model, save_model


def test_paper_unet_parameter_count():
    model = build_unet("ddpm_cifar")
    assert count_parameters(model) == 38_306_691
    cfg = model.config
    assert tuple(cfg.block_out_channels) == (128, 256, 256, 256)
    assert cfg.down_block_types[1] == "AttnDownBlock2D" and cfg.up_block_types[2] == "AttnUpBlock2D"
    assert cfg.resnet_time_scale_shift == "scale_shift" and cfg.dropout == 0.1 and cfg.norm_num_groups == 32


@pytest.mark.parametrize("name", ["unet_small", "unet_tiny"])
def test_small_presets_keep_the_structure(name, tmp_path):
    model = build_unet(name, in_channels=3, sample_size=8)
    assert any("Attn" in b for b in model.config.down_block_types)
    assert model.config.resnet_time_scale_shift == "scale_shift"
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    out = model(x, torch.tensor([0, 999])).sample
    assert out.shape == x.shape
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    torch.testing.assert_close(loaded(x, torch.tensor([0, 999])).sample, out)


def test_unknown_preset_and_missing_model(tmp_path):
    with pytest.raises(ValueError, match="unknown U-Net preset 'big'.*ddpm_cifar"):
        build_unet("big")
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        load_model(tmp_path)
    assert set(PRESETS) == {"ddpm_cifar", "unet_cifar_small", "unet_small", "unet_tiny"}


def test_weights_get_the_mode_of_every_other_artefact(tmp_path):
    """safetensors writes 0600; the weights take config.json's (umask) mode so a shared results folder is readable."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        save_model(build_unet("unet_tiny"), tmp_path / "m")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "m").iterdir()}
    assert modes["diffusion_pytorch_model.safetensors"] == modes["config.json"] == 0o644, modes
