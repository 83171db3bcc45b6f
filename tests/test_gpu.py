"""Checks that need a CUDA device (deselected in CI: `-m "not gpu"`); run with `pytest -m gpu` on a GPU machine."""

from __future__ import annotations

import pytest
import torch

from diffattr.config import validate_config
from diffattr.curvature import FlatEps, Variant, fit_curvature
from diffattr.diffusion import Schedule, sample
from diffattr.diffusion.ddpm import eps_fn
from diffattr.gradients import training_gradients
from diffattr.models import build_unet
from diffattr.runtime import select_device
from diffattr.train import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_auto_device_is_cuda():
    assert select_device("auto") == "cuda"


@pytest.mark.parametrize("precision,compile", [("fp32", False), ("tf32", False), ("bf16", False), ("bf16", True),
                                               ("tf32", "reduce-overhead"), ("bf16", "reduce-overhead")])
def test_training_on_gpu_runs_and_learns(precision, compile):
    cfg = validate_config({"experiment": "g", "train": {"batch_size": 32, "lr": 2e-3, "precision": precision,
                                                        "compile": compile}})["train"]
    data = torch.rand(64, 1, 8, 8) * 2 - 1
    _, hist = train(build_unet("unet_tiny"), data, Schedule.linear(), cfg, seed=0, steps=60, device="cuda", progress=False)
    losses = [h[1] for h in hist]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-10:]) < sum(losses[:10])


@pytest.mark.parametrize("precision,compile", [("tf32", False), ("bf16", False), ("bf16", True),
                                               ("fp32", "reduce-overhead"), ("bf16", "reduce-overhead")])
def test_oracles_on_gpu_at_a_cheaper_precision_stay_close_to_fp32(precision, compile):
    """measure.precision/measure.compile on CUDA (the CIFAR configs' bf16 + inductor, and CUDA graphs): the oracles
    move by rounding only, and the sampler's float32 is untouched."""
    from diffattr.measure import measure_samples

    s = Schedule.linear(100)
    model = build_unet("unet_tiny").eval()
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    cfg = {"measurements": ["loss", "elbo", "timestep_loss"], "mc_samples": 64, "timestep_mc_samples": 16,
           "timesteps": [1, 50], "batch_size": 128, "seed": 0}
    ref = measure_samples(model, s, x0, cfg, device="cuda", progress=False)
    got = measure_samples(model, s, x0, {**cfg, "precision": precision, "compile": compile}, device="cuda",
                          progress=False)
    for name in ("loss", "elbo", "timestep_loss"):
        assert torch.allclose(torch.from_numpy(got[name]), torch.from_numpy(ref[name]), rtol=1e-2), name
    assert not torch.backends.cuda.matmul.allow_tf32 or precision == "tf32"


@pytest.mark.parametrize("compile", [True, "reduce-overhead"])
def test_compiled_bf16_training_on_gpu_resumes_exactly(tmp_path, compile):
    """train.compile (inductor, and inductor with CUDA graphs) with bf16 on CUDA: a run killed after a checkpoint
    continues the uninterrupted run's loss history (to float rounding: some CUDA kernels, e.g. atomics in backward
    passes, are not bit-deterministic)."""
    cfg = validate_config({"experiment": "g", "train": {"batch_size": 32, "lr": 2e-3, "precision": "bf16",
                                                        "compile": compile, "checkpoint_every": 4}})["train"]
    data = torch.rand(64, 1, 8, 8) * 2 - 1
    _, ref = train(build_unet("unet_tiny"), data, Schedule.linear(), cfg, seed=1, steps=8, device="cuda",
                   progress=False)

    class Killed(Exception):
        pass

    def kill(step, _):
        if step == 6:
            raise Killed

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Killed):
        train(build_unet("unet_tiny"), data, Schedule.linear(), cfg, seed=1, steps=8, checkpoint=ckpt, device="cuda",
              on_step=kill, progress=False)
    _, hist = train(build_unet("unet_tiny"), data, Schedule.linear(), cfg, seed=1, steps=8, checkpoint=ckpt,
                    device="cuda", progress=False)
    assert [h[0] for h in hist] == [h[0] for h in ref]
    torch.testing.assert_close(torch.tensor([h[1] for h in hist]), torch.tensor([h[1] for h in ref]), rtol=1e-6,
                               atol=0)


def test_sampling_on_gpu_is_deterministic_for_a_seed():
    model = build_unet("unet_tiny").eval().cuda()
    s = Schedule.linear(50)
    a, _, _ = sample(eps_fn(model), s, (2, 1, 8, 8), torch.Generator().manual_seed(0), "cuda", progress=False)
    b, _, _ = sample(eps_fn(model), s, (2, 1, 8, 8), torch.Generator().manual_seed(0), "cuda", progress=False)
    torch.testing.assert_close(a, b)


def test_gpu_gradients_and_curvature_match_cpu():
    torch.manual_seed(0)
    model = build_unet("unet_tiny").eval()
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    s = Schedule.linear()
    g_cpu = training_gradients(FlatEps(model), images, torch.arange(4), s, 3, seed=1)
    g_gpu = training_gradients(FlatEps(model.cuda()), images.cuda(), torch.arange(4), s, 3, seed=1).cpu()
    torch.testing.assert_close(g_gpu, g_cpu, rtol=1e-3, atol=1e-4)
    curv = fit_curvature(model, images.cuda(), s, Variant.from_name("kfac_mc_expand"), 2, 2, seed=0, device="cuda",
                         progress=False)
    assert torch.isfinite(curv.eigenvalues()).all()
