"""TRAK / D-TRAK: kernel identity, Johnson–Lindenstrauss projection, D-TRAK output gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from trak.projectors import BasicProjector, ProjectionType

from diffattr.curvature import FlatEps, kfac_parameters
from diffattr.diffusion import Schedule
from diffattr.diffusion.draws import example_draws, noisy_inputs
from diffattr.gradients import training_gradients
from diffattr.models import build_unet
from diffattr.scores.bank import QueryBank
from diffattr.scores.base import GradientInputs
from diffattr.scores.trak import (
    HalfTrakPreconditioner,
    HeldBlocksProjector,
    make_projector,
    project,
    trak_scores,
)


def test_kernel_from_one_eigendecomposition_equals_the_direct_damped_solve():
    """The TRAK kernel φ_qᵀ(ΦᵀΦ/N + λI)⁻¹φ_j, from one eigendecomposition for every λ, equals the damped linear
    solve done directly, on unprojected training gradients (Φ = the gradients of a block of 600 parameters)."""
    torch.manual_seed(0)
    model = build_unet("unet_tiny").eval().double()
    wrapper = FlatEps(model)
    s = Schedule.linear()
    images = torch.rand(10, 1, 8, 8, dtype=torch.float64) * 2 - 1
    grads = training_gradients(wrapper, images, torch.arange(10), s, 3, seed=0)  # [N, P], P ≈ 1.9e5
    # restrict to a sub-block of parameters so the explicit P x P matrix fits (the identity is per coordinate set)
    sub = grads[:, : 600]
    query = torch.randn(2, 600, dtype=torch.float64)
    dampings = [1e-6, 1e-2, 1.0]
    ours = trak_scores(query, sub, dampings)
    fisher = sub.T @ sub / sub.shape[0]
    for k, lam in enumerate(dampings):
        direct = query @ torch.linalg.solve(fisher + lam * torch.eye(600, dtype=torch.float64), sub.T)
        torch.testing.assert_close(ours[k].double(), direct, rtol=2e-4, atol=1e-6 * direct.abs().max().item())


@pytest.mark.parametrize("k", [512, 2048])
def test_projector_preserves_inner_products(k):
    g = torch.Generator().manual_seed(0)
    P, n = 20_000, 12
    x = torch.randn(n, P, generator=g)
    x[1] = x[0] + 0.5 * x[1]  # some correlated pairs
    proj = make_projector(P, k, seed=0, device="cpu")
    y = project(proj, x)
    assert y.shape == (n, k)
    gram, gram_p = x @ x.T, y @ y.T
    norms = x.norm(dim=1)
    rel = (gram_p - gram).abs() / torch.outer(norms, norms)
    tol = 5 / math.sqrt(k)  # JL: |<Pu,Pv> - <u,v>| <= eps |u||v| with eps ~ c/sqrt(k)
    assert rel.max().item() < tol, (rel.max().item(), tol)
    again = project(make_projector(P, k, seed=0, device="cpu"), x)
    assert torch.equal(y, again)  # deterministic for a seed


def test_held_projector_equals_basic_projector_bit_for_bit():
    """The kept blocks are traker's own blocks: the same projection, several blocks, two calls in a row."""
    P, k, block = 3_000, 250, 100  # three blocks, the last one partly used
    held = HeldBlocksProjector(P, k, 7, ProjectionType.rademacher, "cpu", block_size=block)
    basic = BasicProjector(P, k, 7, ProjectionType.rademacher, "cpu", block_size=block)
    assert held.num_blocks == 3
    g = torch.Generator().manual_seed(0)
    for n in (5, 9):
        x = torch.randn(n, P, generator=g)
        assert torch.equal(held.project(x, model_id=0), basic.project(x, model_id=0))
    assert len(held.blocks) == 3 and held.blocks[0].shape == (P, block)
    assert isinstance(make_projector(P, k, seed=0, device="cpu"), HeldBlocksProjector)


def test_dtrak_output_gradient_matches_finite_differences():
    torch.manual_seed(1)
    model = build_unet("unet_tiny").eval().double()
    wrapper = FlatEps(model)
    s = Schedule.linear()
    x0 = torch.rand(1, 1, 8, 8, dtype=torch.float64) * 2 - 1
    idx = torch.tensor([3])
    g = training_gradients(wrapper, x0, idx, s, 4, seed=5, output="square_norm")[0]
    params = [p for _, p in kfac_parameters(wrapper)]
    d = example_draws(idx, 4, (1, 8, 8), s.num_timesteps, 5)
    x_t = noisy_inputs(x0, d, s, False)[0]

    def f() -> float:
        with torch.no_grad():
            return wrapper({"x": x_t, "t": d.t[0]}).pow(2).sum(1).mean().item()

    v = torch.randn(g.shape[0], dtype=torch.float64)
    v /= v.norm()
    h = 1e-5
    chunks = v.split([p.numel() for p in params])
    with torch.no_grad():
        for p, c in zip(params, chunks, strict=True):
            p.add_(h * c.view_as(p))
    f_plus = f()
    with torch.no_grad():
        for p, c in zip(params, chunks, strict=True):
            p.sub_(2 * h * c.view_as(p))
    f_minus = f()
    fd = (f_plus - f_minus) / (2 * h)
    assert (g @ v).item() == pytest.approx(fd, rel=1e-5, abs=1e-8)
    # and the loss output differs from the square-norm output
    g_loss = training_gradients(wrapper, x0, idx, s, 4, seed=5, output="loss")[0]
    assert not torch.allclose(g, g_loss)


def test_float16_trak_matches_float64_at_large_damping_and_breaks_at_tiny_damping():
    """Paper Fig. 20: half precision is fine when λ is resolvable, and non-finite when λ is lost in the rounding of
    a singular kernel (N < k)."""
    g = torch.Generator().manual_seed(0)
    train = torch.randn(12, 32, generator=g, dtype=torch.float64)  # rank 12 < k = 32: ΦᵀΦ/N is singular
    query = torch.randn(3, 32, generator=g, dtype=torch.float64)
    dampings = [1e-9, 1e-1, 1.0]
    want = trak_scores(query, train, dampings).double()
    pre = HalfTrakPreconditioner.fit(None, train, dampings)
    assert pre.inverses.dtype == torch.float16 and pre.train_rows.dtype == torch.float16
    bank = QueryBank("none", None, dtype=pre.dtype)  # the scoring seam, as compute_scores runs it
    bank.add(("trak_fp16", "loss"), pre.rotate(query))
    half = bank.scores(pre.train_rows)[("trak_fp16", "loss")]
    got = half.double()
    assert half.dtype == torch.float16
    for d in (1, 2):
        torch.testing.assert_close(got[d], want[d], rtol=2e-2, atol=2e-2 * want[d].abs().max().item())
    # 1e-9 is below float16's smallest subnormal: K + λI is K, singular, and its "inverse" is not finite
    assert not torch.isfinite(got[0]).all()
    assert torch.isfinite(want[0]).all()


def test_dtrak_scores_every_query_like_its_own_single_query_run():
    """D-TRAK's query gradient is the square-norm output's for every measurement, so the scores of a run over several
    queries (scored once) equal those of a run over each query alone, and TRAK's differ between queries."""
    from diffattr.curvature import FlatEps
    from diffattr.queries import queries
    from diffattr.scores.trak import score_dtrak, score_trak

    torch.manual_seed(0)
    inputs = GradientInputs(FlatEps(build_unet("unet_tiny")).eval(), Schedule.linear(),
                            torch.rand(7, 1, 8, 8) * 2 - 1, torch.rand(3, 1, 8, 8) * 2 - 1, None)
    sections = {"influence": {"gradient_mc_samples": 2, "batch_size": 4, "seed": 3, "query_compression": "int8",
                              "bank_memory_mb": 64}, "diffusion": {}, "train.hflip": False,
                "trak": {"projection_dim": 64, "seed": 0, "dampings": [1e-3, 1.0], "default_damping": 1e-3}}
    several = queries(["loss", "elbo", "timestep_loss"], [10])
    files, _ = score_dtrak(sections, inputs, several, progress=False)
    assert [f.query for f in files] == [q.name for q in several] and {f.predicts for f in files} == {"square_norm"}
    for f, q in zip(files, several, strict=True):
        alone, _ = score_dtrak(sections, inputs, [q], progress=False)
        assert f.scores.shape == (2, 3, 7)
        np.testing.assert_array_equal(f.scores, alone[0].scores)
    trak, _ = score_trak(sections, inputs, several[:2], progress=False)
    assert not np.allclose(trak[0].scores, trak[1].scores)
