"""K-FAC exactness against brute-force GGNs, and our one-pass preconditioning against curvlinops' inverse."""

from __future__ import annotations

import pytest
import torch
from curvlinops import KFACInverseLinearOperator, KFACLinearOperator
from torch import nn
from torch.func import functional_call, jacrev

from diffattr.curvature import (
    Approx,
    Fisher,
    FlatEps,
    Variant,
    build_operator,
    curvature_from_operator,
    fit_curvature,
    kfac_parameters,
    load_curvature,
    save_curvature,
)
from diffattr.diffusion import Schedule
from diffattr.models import build_unet


@pytest.fixture(autouse=True, scope="module")
def _float64():
    """Exactness tests run in float64 (set per module run, not at import: collection must not leak it)."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def deep_linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5, bias=False), nn.Linear(5, 6, bias=False), nn.Linear(6, 3, bias=False)).double()


def brute_force_ggn(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """GGN of the mean over examples of ||f(x) - y||² (Hessian of the loss wrt f: 2I), from explicit Jacobians."""
    named = kfac_parameters(model)
    params = {n: p.detach() for n, p in named}
    jac = jacrev(lambda p, x: functional_call(model, p, (x,)))(params, X)  # {name: [N, D, *shape]}
    J = torch.cat([jac[n].flatten(2) for n, _ in named], dim=2)  # [N, D, P]
    return 2 * torch.einsum("ndp,ndq->pq", J, J) / X.shape[0]


def block_diagonal(M: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    out = torch.zeros_like(M)
    start = 0
    for s in sizes:
        out[start : start + s, start : start + s] = M[start : start + s, start : start + s]
        start += s
    return out


def test_deep_linear_network_kfac_equals_exact_blockwise_ggn():
    """For a deep linear network with MSE, K-FAC (exact output Hessian) equals the GGN's layer blocks."""
    model = deep_linear()
    X, Y = torch.randn(12, 4), torch.randn(12, 3)
    params = [p for _, p in kfac_parameters(model)]
    op = KFACLinearOperator(model, nn.MSELoss(reduction="sum"), params, [(X, Y)], fisher_type="type-2",
                            check_deterministic=False, num_data=12)
    curv = curvature_from_operator(op, model, 12, Variant(Fisher.MC, Approx.EXPAND), {})
    ggn_bd = block_diagonal(brute_force_ggn(model, X), curv.sizes)
    P = sum(curv.sizes)
    dense = curv.rotate_back(curv.eigenvalues()[None] * curv.rotate(torch.eye(P)))
    torch.testing.assert_close(dense, ggn_bd, rtol=1e-9, atol=1e-10)
    # preconditioned scores equal those of the exact (block) GGN, for several dampings in one pass
    queries, train = torch.randn(3, P), torch.randn(7, P)
    dampings = [1e-6, 1e-3, 1.0]
    pre = curv.precondition(queries, dampings)
    for k, lam in enumerate(dampings):
        exact = torch.linalg.solve(ggn_bd + lam * torch.eye(P), queries.T).T
        torch.testing.assert_close(pre[k] @ train.T, exact @ train.T, rtol=1e-7, atol=1e-7)


def test_single_example_single_layer_empirical_kfac_is_exact():
    """One example, one Linear layer: empirical K-FAC equals the exact empirical Fisher ∇ℓ∇ℓᵀ."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4, bias=False)).double()
    X, Y = torch.randn(1, 5), torch.randn(1, 4)
    params = [p for _, p in kfac_parameters(model)]
    op = KFACLinearOperator(model, nn.MSELoss(reduction="sum"), params, [(X, Y)], fisher_type="empirical",
                            check_deterministic=False, num_data=1)
    curv = curvature_from_operator(op, model, 1, Variant(Fisher.EMPIRICAL, Approx.EXPAND), {})
    loss = (model(X) - Y).pow(2).sum()
    g = torch.cat([q.flatten() for q in torch.autograd.grad(loss, params)])
    dense = curv.rotate_back(curv.eigenvalues()[None] * curv.rotate(torch.eye(20)))
    torch.testing.assert_close(dense, torch.outer(g, g), rtol=1e-9, atol=1e-10)


@pytest.fixture(scope="module")
def tiny_unet_setup():
    """A tiny U-Net in float64, so that comparisons hold to float64 precision."""
    torch.set_default_dtype(torch.float32)
    model = build_unet("unet_tiny").eval().double()
    images = torch.rand(6, 1, 8, 8, dtype=torch.float64) * 2 - 1
    return model, images, Schedule.linear()


@pytest.mark.parametrize("name", ["kfac_mc_expand", "kfac_empirical_reduce", "ekfac_mc_expand"])
def test_one_pass_damping_sweep_matches_curvlinops_inverse(tiny_unet_setup, name):
    torch.set_default_dtype(torch.float32)
    model, images, schedule = tiny_unet_setup
    variant = Variant.from_name(name)
    curv = fit_curvature(model, images, schedule, variant, mc_samples=3, batch_size=2, seed=0, progress=False)
    assert len(curv.layers) == sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())
    wrapper = FlatEps(model)
    op, n_data = build_operator(wrapper, images, schedule, variant, 3, 2, 0, progress=False)
    params = [p for _, p in kfac_parameters(wrapper)]
    v = torch.randn(2, sum(curv.sizes), dtype=torch.float64)
    dampings = [1e-4, 1e-2, 1.0]
    ours = curv.precondition(v, dampings)
    for k, lam in enumerate(dampings):
        # curvlinops' operator is the GGN of the summed loss = n_data x ours: (A + n λ)^-1 n = (A/n + λ)^-1
        inv = KFACInverseLinearOperator(op, damping=lam * n_data, use_exact_damping=True)
        ref = (inv @ v.T.contiguous()).T * n_data
        torch.testing.assert_close(ours[k], ref, rtol=1e-6, atol=1e-10 * ref.abs().max().item())
    assert len(params) == len(curv.param_names)


def test_float32_preconditioning_matches_float64(tiny_unet_setup):
    """float32 queries: float64 into the eigenbasis and rescaling, float32 back; rows agree to float32 precision."""
    torch.set_default_dtype(torch.float32)
    model, images, schedule = tiny_unet_setup
    curv = fit_curvature(model, images, schedule, Variant.from_name("kfac_mc_expand"), 2, 3, seed=1, progress=False)
    v = torch.randn(3, sum(curv.sizes), dtype=torch.float64)
    ref = curv.precondition(v, [1e-8, 1e-2])
    got = curv.precondition(v.float(), [1e-8, 1e-2])
    assert got.dtype == torch.float32 and got.shape == ref.shape
    rel = (got.double() - ref).norm(dim=-1) / ref.norm(dim=-1)
    assert rel.max() < 1e-5, rel


def test_curvature_roundtrip(tiny_unet_setup, tmp_path):
    torch.set_default_dtype(torch.float32)
    model, images, schedule = tiny_unet_setup
    for name in ("kfac_mc_reduce", "ekfac_empirical_expand"):
        curv = fit_curvature(model, images, schedule, Variant.from_name(name), 2, 3, seed=4, progress=False)
        save_curvature(curv, tmp_path / f"{name}.h5")
        back = load_curvature(tmp_path / f"{name}.h5")
        assert back.variant == curv.variant and back.param_names == curv.param_names
        assert back.args["mc_samples"] == 2 and back.args["seed"] == 4 and back.args["variant"] == name
        v = torch.randn(1, sum(curv.sizes), dtype=torch.float64)
        torch.testing.assert_close(back.precondition(v, [1e-2]), curv.precondition(v, [1e-2]))
        assert back.layers[0].QA.dtype == torch.float64


def _reference_eq11_factors(wrapper: nn.Module, images, schedule, K: int, seed: int, approx: str) -> dict:
    """K-FAC of eq. 11 built by hand from each layer's inputs and output gradients (not through curvlinops).

    Per layer: a ``[N, K·S, d_in]`` and δ ``[N, K·S, d_out]`` (S locations sharing the weights; δ = gradient of
    the summed loss Σ_(n,k) ρ_nk, so that of ℓ̃_n = mean_k ρ_nk is δ/K). expand: A = mean over (n, k, s) of a aᵀ,
    G = (1/N) Σ (δ/K)(δ/K)ᵀ; reduce: A = (1/N) Σ_n ā_n ā_nᵀ (mean over k, s), G = (1/N) Σ_n ḡ_n ḡ_nᵀ with
    ḡ_n = Σ_(k,s) δ/K.
    """
    from diffattr.curvature.data import curvature_batches

    N = images.shape[0]
    (X, eps), = list(curvature_batches(images, schedule, K, N, seed, False, "cpu"))
    acts, grads, handles = {}, {}, []
    layers = {n: m for n, m in wrapper.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}

    def pre(name, module, inputs):
        x = inputs[0].detach()
        if isinstance(module, nn.Conv2d):
            x = torch.nn.functional.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride).transpose(1, 2)
        acts[name] = x.reshape(N, -1, x.shape[-1])

    def post(name, module, inputs, out):
        def keep(g):
            g = g.detach()
            g = g.flatten(2).transpose(1, 2) if isinstance(module, nn.Conv2d) else g
            grads[name] = g.reshape(N, -1, g.shape[-1]) / K
        out.register_hook(keep)

    for name, m in layers.items():
        handles += [m.register_forward_pre_hook(lambda mod, i, n=name: pre(n, mod, i)),
                    m.register_forward_hook(lambda mod, i, o, n=name: post(n, mod, i, o))]
    (wrapper(X) - eps).pow(2).sum().backward()
    for h in handles:
        h.remove()
    out = {}
    for name in layers:
        a, d = acts[name], grads[name]
        if approx == "expand":
            A, G = torch.einsum("nsi,nsj->ij", a, a) / a.shape[0] / a.shape[1], torch.einsum("nsi,nsj->ij", d, d) / N
        else:
            abar, dbar = a.mean(1), d.sum(1)
            A, G = abar.T @ abar / N, dbar.T @ dbar / N
        out[name] = (A, G)
    return out


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_empirical_kfac_is_kfac_of_eq11(tiny_unet_setup, approx):
    """The empirical variant's factors equal K-FAC of eq. 11 (draws of an example share the weights), layer by layer."""
    torch.set_default_dtype(torch.float32)
    model, images, schedule = tiny_unet_setup
    K = 3
    curv = fit_curvature(model, images, schedule, Variant(Fisher.EMPIRICAL, Approx(approx)), K, 2, seed=0, progress=False)
    ref = _reference_eq11_factors(FlatEps(model), images, schedule, K, 0, approx)
    assert curv.args["operator_scale"] == images.shape[0] * K**2
    # reduce: a layer feeding a GroupNorm has Σ_s δ ≈ 0 (the norm ignores shifts), so tolerances are global
    g_tol, a_tol = (1e-10 * max(r[i].abs().max().item() for r in ref.values()) for i in (1, 0))
    for layer in curv.layers:
        A, G = ref[layer.module]
        torch.testing.assert_close(layer.G, G, rtol=1e-8, atol=g_tol)
        if layer.A is not None:
            torch.testing.assert_close(layer.A, A, rtol=1e-8, atol=a_tol)


def test_empirical_expand_is_per_draw_expand_over_k(tiny_unet_setup):
    """expand: eq. 11 and per-draw data points give the same factors up to 1/K in G (so eigenvalues / K)."""
    torch.set_default_dtype(torch.float32)
    model, images, schedule = tiny_unet_setup
    K = 4
    ours = fit_curvature(model, images, schedule, Variant(Fisher.EMPIRICAL, Approx.EXPAND), K, 3, seed=2, progress=False)
    wrapper = FlatEps(model)
    from diffattr.curvature.data import CurvatureData

    n = images.shape[0] * K
    per_draw = KFACLinearOperator(wrapper, nn.MSELoss(reduction="sum"), [p for _, p in kfac_parameters(wrapper)],
                                  CurvatureData(images, schedule, K, 3, 2, False, "cpu"), check_deterministic=False,
                                  fisher_type="empirical", num_data=n, num_per_example_loss_terms=1,
                                  batch_size_fn=lambda X: X["x"].shape[0])
    pd = curvature_from_operator(per_draw, wrapper, n, Variant(Fisher.EMPIRICAL, Approx.EXPAND), {})
    torch.testing.assert_close(ours.eigenvalues(), pd.eigenvalues() / K, rtol=1e-7, atol=1e-14)
    for a, b in zip(ours.layers, pd.layers, strict=True):
        torch.testing.assert_close(a.G, b.G / K, rtol=1e-8, atol=1e-16)
        if a.A is not None:
            torch.testing.assert_close(a.A, b.A, rtol=1e-8, atol=1e-16)


def test_empirical_reduce_is_exact_where_per_draw_reduce_is_not():
    """One example whose layer input is the same for all K draws (only the targets ε vary): its loss gradient is
    ḡ aᵀ, so K-FAC reduce of eq. 11 equals the dense empirical GGN ∇ℓ̃∇ℓ̃ᵀ exactly; per-draw reduce does not."""
    from diffattr.curvature.kfac import PerExampleKFAC

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(3)
    K = 5
    model = nn.Sequential(nn.Linear(4, 3, bias=False)).double()
    X, Y = torch.randn(1, 4).repeat(K, 1), torch.randn(K, 3)  # one example, K draws of its target
    params = [p for _, p in kfac_parameters(model)]
    op = PerExampleKFAC(model, nn.MSELoss(reduction="sum"), params, [(X, Y)], fisher_type="empirical",
                        kfac_approx="reduce", check_deterministic=False, num_data=1, draws=K)
    ours = curvature_from_operator(op, model, K**2, Variant(Fisher.EMPIRICAL, Approx.REDUCE), {})
    loss = (model(X) - Y).pow(2).sum(1).mean()  # ℓ̃: the example's loss averaged over its draws
    g = torch.cat([q.flatten() for q in torch.autograd.grad(loss, params)])
    dense = lambda c: c.rotate_back(c.eigenvalues()[None] * c.rotate(torch.eye(12)))  # noqa: E731
    torch.testing.assert_close(dense(ours), torch.outer(g, g), rtol=1e-9, atol=1e-12)
    per_draw = KFACLinearOperator(model, nn.MSELoss(reduction="sum"), params, [(X, Y)], fisher_type="empirical",
                                  kfac_approx="reduce", check_deterministic=False, num_data=K)
    other = dense(curvature_from_operator(per_draw, model, K, Variant(Fisher.EMPIRICAL, Approx.REDUCE), {}))
    assert (other - torch.outer(g, g)).norm() > 0.5 * torch.outer(g, g).norm()


def test_variant_names():
    assert Variant.from_name("ekfac_empirical_reduce") == Variant(Fisher.EMPIRICAL, Approx.REDUCE, True)
    assert Variant.from_config({"fisher": "mc", "approx": "expand"}).name == "kfac_mc_expand"
    with pytest.raises(ValueError):
        Variant.from_name("shampoo_mc_expand")
