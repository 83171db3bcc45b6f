"""K-FAC / EK-FAC of the GGN through curvlinops, its float64 eigendecomposition, and damped preconditioning.

Scale: the factors approximate the GGN of the training loss ℓ = ||ε - ε_θ(x_t, t)||² (summed over pixels)
**averaged over the data set** (and over the Monte-Carlo draws of t, ε and flips), from curvlinops with
``MSELoss(reduction="sum")``. Damping λ is added to exactly this matrix, as in the paper (appendix G.4).

The two GGNs differ in what a data point is (paper appendix G.3, G.8):

- ``mc`` (GGN_model, eq. 10): an expectation over examples *and* draws of per-draw terms, so every
  (example, draw) pair is one curvlinops data point.
- ``empirical`` (GGN_loss, eq. 11): outer products of the gradient of each example's loss ℓ̃_n, the loss
  *averaged over its K draws*, g_n = (1/K) Σ_k ∇ρ_nk. For a Linear/Conv2d layer ∇ρ_nk = Σ_s δ_nks a_nksᵀ over the
  locations s that share the weights, so g_n = (1/K) Σ_(k,s) δ_nks a_nksᵀ: the draws of one example share the
  weights exactly as the locations do. K-FAC of eq. 11 therefore treats (draw, location) as one weight-sharing
  dimension (:class:`_DrawsShareWeights`):

  - ``expand``: A = E[a aᵀ] over all (n, k, s); G = (1/N) Σ_(n,k,s) (δ_nks/K)(δ_nks/K)ᵀ. Cross terms between
    locations are dropped either way, so this is the per-draw construction (each (example, draw) a data point,
    G = (1/NK) Σ δδᵀ) **times 1/K**: the same eigenvectors, eigenvalues scaled by 1/K (tested).
  - ``reduce``: ā_n = mean over (k, s) of a_nks, ḡ_n = (1/K) Σ_(k,s) δ_nks; A = (1/N) Σ ā_n ā_nᵀ,
    G = (1/N) Σ ḡ_n ḡ_nᵀ. Not a rescaled per-draw reduce (that averages within each draw only); it is exact
    where the per-draw one is not, e.g. for one example whose layer input does not change across draws (tested).

Vectors are flattened over the K-FAC parameters (:func:`~diffattr.curvature.data.kfac_parameters` order), each
parameter row-major (a conv weight ``[out, in, kh, kw]`` as ``[out, in·kh·kw]``), ``[n, P]``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from curvlinops import EKFACLinearOperator, KFACLinearOperator
from curvlinops.kfac_utils import extract_averaged_patches, extract_patches
from einops import rearrange
from torch import nn

from diffattr.config import variant_name
from diffattr.curvature.data import CurvatureData, FlatEps, kfac_parameters
from diffattr.diffusion import Schedule
from diffattr.io import CHECKSUM_ATTR, PROVENANCE_ATTRS, read_h5, write_h5

log = logging.getLogger(__name__)


class Fisher(StrEnum):
    """GGN choice: ``mc`` = GGN of the model output (paper eq. 9/10), ``empirical`` = of the loss (eq. 11)."""

    MC = "mc"
    EMPIRICAL = "empirical"


class Approx(StrEnum):
    """K-FAC variant for weight-sharing layers (Eschenhagen et al., 2023)."""

    EXPAND = "expand"
    REDUCE = "reduce"


@dataclass(frozen=True)
class Variant:
    """One curvature approximation; its ``name`` (e.g. ``kfac_mc_expand``) names files and score methods."""

    fisher: Fisher
    approx: Approx
    eigencorrection: bool = False

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> Variant:
        return cls(Fisher(entry["fisher"]), Approx(entry["approx"]), bool(entry.get("eigencorrection", False)))

    @classmethod
    def from_name(cls, name: str) -> Variant:
        kind, fisher, approx = name.split("_")
        if kind not in {"kfac", "ekfac"}:
            raise ValueError(f"invalid curvature name {name!r}: expected (e)kfac_<fisher>_<approx>")
        return cls(Fisher(fisher), Approx(approx), kind == "ekfac")

    @property
    def name(self) -> str:
        return variant_name(self.fisher.value, self.approx.value, self.eigencorrection)


@dataclass
class Layer:
    """Kronecker factors of one Linear/Conv2d layer and their eigendecompositions.

    Attributes:
        module: Module name (inside :class:`FlatEps`, prefix ``unet.``).
        params: ``{"weight": index, "bias": index}`` into the K-FAC parameter list.
        A: Input covariance ``[d_in, d_in]`` (None without weight).
        G: Gradient covariance ``[d_out, d_out]``.
        QA, LA, QG, LG: Eigenvectors/values of A and G, float64.
        corrected: EK-FAC eigenvalues per parameter index (``[d_out, d_in]`` or ``[d_out]``), float64.
    """

    module: str
    params: dict[str, int]
    A: torch.Tensor | None
    G: torch.Tensor
    QA: torch.Tensor | None
    LA: torch.Tensor | None
    QG: torch.Tensor
    LG: torch.Tensor
    corrected: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class Curvature:
    """A fitted (E)K-FAC approximation G ≈ blockdiag(A_l ⊗ G_l) with everything needed to precondition.

    Attributes:
        variant: Which approximation.
        layers: One entry per layer.
        param_names: Names of the K-FAC parameters (order of the flattened vectors).
        param_shapes: Their shapes.
        args: The arguments that produced the fit (stored with the artefact).
    """

    variant: Variant
    layers: list[Layer]
    param_names: list[str]
    param_shapes: list[tuple[int, ...]]
    args: dict[str, Any]

    @property
    def sizes(self) -> list[int]:
        return [int(np.prod(s)) for s in self.param_shapes]

    def _split(self, vecs: torch.Tensor) -> list[torch.Tensor]:
        """``[n, P]`` -> per parameter ``[n, d_out, d_in]`` (weights) or ``[n, d_out]`` (biases)."""
        parts = list(vecs.split(self.sizes, dim=1))
        return [p.reshape(p.shape[0], s[0], -1) if len(s) > 1 else p for p, s in zip(parts, self.param_shapes, strict=True)]

    @staticmethod
    def _join(parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([p.flatten(1) for p in parts], dim=1)

    def rotate(self, vecs: torch.Tensor) -> torch.Tensor:
        """Coordinates in the Kronecker eigenbasis: Q_Gᵀ V Q_A per weight, Q_Gᵀ b per bias. ``[n, P]`` -> ``[n, P]``."""
        parts = self._split(vecs)
        for layer in self.layers:
            QG = layer.QG.to(vecs)
            for kind, i in layer.params.items():
                v = torch.einsum("ji,njk->nik", QG, parts[i]) if kind == "weight" else parts[i] @ QG
                parts[i] = v @ layer.QA.to(vecs) if kind == "weight" else v
        return self._join(parts)

    def rotate_back(self, coords: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`rotate` (the eigenbases are orthogonal)."""
        parts = self._split(coords)
        for layer in self.layers:
            QG = layer.QG.to(coords)
            for kind, i in layer.params.items():
                if kind == "weight":
                    parts[i] = torch.einsum("ij,njk->nik", QG, parts[i] @ layer.QA.to(coords).T)
                else:
                    parts[i] = parts[i] @ QG.T
        return self._join(parts)

    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues of the approximation in the eigenbasis, flattened like a vector, ``[P]`` float64.

        K-FAC: λ_G ⊗ λ_A for weights, λ_G for biases; EK-FAC: the corrected eigenvalues. Clipped at 0.
        """
        out: list[torch.Tensor | None] = [None] * len(self.param_shapes)
        for layer in self.layers:
            for kind, i in layer.params.items():
                if self.variant.eigencorrection:
                    out[i] = layer.corrected[i]
                elif kind == "weight":
                    out[i] = torch.outer(layer.LG, layer.LA)
                else:
                    out[i] = layer.LG.clone()
        return torch.cat([o.flatten() for o in out]).clamp(min=0)

    def precondition(self, vecs: torch.Tensor, dampings: Sequence[float]) -> torch.Tensor:
        """(G + λI)⁻¹ v for every λ in one pass: rotate once, rescale per λ, rotate back.

        Args:
            vecs: ``[n, P]``.
            dampings: λ values (absolute, on the GGN of the data-set-averaged loss).

        Returns:
            ``[n_damping, n, P]`` in the dtype of ``vecs``.
        """
        # Into the eigenbasis and rescaled in float64: dividing by small eigenvalues amplifies rounding errors of
        # the coordinates. Back in the dtype of ``vecs``: that rotation's rounding stays relative to the result.
        coords = self.rotate(vecs.double())
        lam = self.eigenvalues().to(coords.device)
        return torch.stack([self.rotate_back((coords / (lam + d)).to(vecs.dtype)) for d in dampings])


class _DrawsShareWeights:
    """curvlinops (E)K-FAC in which every ``draws`` consecutive batch rows are one data point (paper eq. 11).

    curvlinops takes the leading dimension of each layer's input and output gradient as the data points and the
    remaining (spatial, token) dimensions as weight sharing; it has no option for a weight-sharing dimension that
    lives in the batch, which is where the (t, ε, flip) draws of one example sit (``[B·K, ...]``, example-major).
    These overrides only regroup the tensors to ``[B, K, ..., d]`` (patches extracted first, channels last) and hand
    them to curvlinops' own factor and eigenvalue-correction code, which then sums (reduce) or flattens (expand)
    draws and locations together. ``module=None`` tells curvlinops the tensor is already in that layout.
    """

    def __init__(self, *args: Any, draws: int, **kwargs: Any):
        self.draws = draws
        super().__init__(*args, **kwargs)

    def _group(self, x: torch.Tensor) -> torch.Tensor:
        """``[B·K, ...]`` -> ``[B, K, ...]``."""
        return x.reshape(x.shape[0] // self.draws, self.draws, *x.shape[1:])

    def _layer_inputs(self, module: nn.Module, x: torch.Tensor, averaged: bool) -> torch.Tensor:
        if isinstance(module, nn.Conv2d):
            extract = extract_averaged_patches if averaged else extract_patches
            x = extract(x, module.kernel_size, module.stride, module.padding, module.dilation, module.groups)
        return self._group(x)

    def _output_grads(self, module: nn.Module, g: torch.Tensor) -> torch.Tensor:
        if isinstance(module, nn.Conv2d):
            g = rearrange(g, "batch c o1 o2 -> batch o1 o2 c")
        return self._group(g)

    def _hook_accumulate_input_covariance(self, module: nn.Module, inputs: tuple[torch.Tensor], module_name: str):
        x = self._layer_inputs(module, inputs[0].data.detach(), averaged=self._kfac_approx == Approx.REDUCE)
        super()._hook_accumulate_input_covariance(None, (x,), module_name)

    def _accumulate_gradient_covariance(self, grad_output: torch.Tensor, module: nn.Module, module_name: str):
        super()._accumulate_gradient_covariance(self._output_grads(module, grad_output.detach()), None, module_name)

    def _hook_cache_inputs(self, module: nn.Module, inputs: tuple[torch.Tensor], module_name: str):  # EK-FAC
        self._cached_activations[module_name] = self._layer_inputs(module, inputs[0].data.detach(), averaged=False)

    def _accumulate_corrected_eigenvalues(self, grad_output: torch.Tensor, module: nn.Module, module_name: str):
        super()._accumulate_corrected_eigenvalues(self._output_grads(module, grad_output.detach()), None, module_name)


class PerExampleKFAC(_DrawsShareWeights, KFACLinearOperator):
    """K-FAC of the empirical GGN of eq. 11: one data point per training example, its draws shared."""


class PerExampleEKFAC(_DrawsShareWeights, EKFACLinearOperator):
    """EK-FAC of the empirical GGN of eq. 11 (eigenvalues corrected with per-example gradients of ℓ̃_n)."""


def _named_factors(state: Mapping[str, Any], key: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.get(key, {}).items()}


def curvature_from_operator(
    op: KFACLinearOperator, wrapper: nn.Module, scale: float, variant: Variant, args: Mapping[str, Any]
) -> Curvature:
    """Compute an operator's factors once and turn them into a :class:`Curvature` of the data-set **mean**.

    curvlinops with ``MSELoss(reduction="sum")`` approximates the GGN of the summed loss; the gradient factors
    (and EK-FAC eigenvalues) are divided by ``scale`` so that the result approximates the GGN of the loss
    averaged over the data, the matrix the damping refers to.

    Args:
        op: An (E)KFAC operator over ``kfac_parameters(wrapper)``; its factors are computed here unless they
            already are.
        wrapper: The model the operator was built on.
        scale: The operator is ``scale`` times the GGN of the mean loss: its number of data points, times K²
            for the per-example operators of eq. 11 (their summed loss counts each example's K draws in full,
            where ℓ̃_n averages them).
        variant: Its description (names the result).
        args: Arguments to store with it.
    """
    named = kfac_parameters(wrapper)
    params = [p for _, p in named]
    state = op.state_dict()
    if not state["gradient_covariances"]:  # not computed yet (computing twice would add them up)
        op.compute_kronecker_factors()
        state = op.state_dict()
    A_all, G_all = _named_factors(state, "input_covariances"), _named_factors(state, "gradient_covariances")
    G_all = {k: v / scale for k, v in G_all.items()}
    mapping = op.compute_parameter_mapping(params, wrapper)
    eigencorrection = isinstance(op, EKFACLinearOperator)
    if eigencorrection:
        op.compute_eigenvalue_correction()
        state = op.state_dict()
        QA_all = _named_factors(state, "input_covariances_eigenvectors")
        QG_all = _named_factors(state, "gradient_covariances_eigenvectors")
        corrected = state["corrected_eigenvalues"]
    layers = []
    for module, pos in mapping.items():
        A, G = A_all.get(module), G_all[module]
        if eigencorrection:
            # EK-FAC's eigenbasis is curvlinops' own (eigenvalues were corrected in it); LA, LG are the Rayleigh
            # quotients of the factors in that basis, kept for inspection.
            QA = QA_all[module].double() if module in QA_all else None
            QG = QG_all[module].double()
            LA = torch.einsum("ji,jk,ki->i", QA, A.double(), QA) if QA is not None else None
            LG = torch.einsum("ji,jk,ki->i", QG, G.double(), QG)
            corr = {int(i): v.detach().double() / scale for i, v in corrected[module].items()}
        else:
            LA, QA = torch.linalg.eigh(A.double()) if A is not None else (None, None)
            LG, QG = torch.linalg.eigh(G.double())
            corr = {}
        layers.append(Layer(module, dict(pos), A, G, QA, LA, QG, LG, corr))
    full_args = {**dict(args), "variant": variant.name, "operator_scale": float(scale)}
    return Curvature(variant, layers, [nm for nm, _ in named], [tuple(p.shape) for p in params], full_args)


def build_operator(
    wrapper: FlatEps,
    images: torch.Tensor,
    schedule: Schedule,
    variant: Variant,
    mc_samples: int,
    batch_size: int,
    seed: int,
    hflip: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[KFACLinearOperator, float]:
    """The curvlinops (E)KFAC operator over every training example × ``mc_samples`` draws, and its scale.

    ``mc``: every (example, draw) pair is a data point. ``empirical``: every example is one, its draws a
    weight-sharing dimension (eq. 11; see the module docstring). Factors are not computed yet (see
    :func:`curvature_from_operator`, which takes the returned scale).
    """
    params = [p for _, p in kfac_parameters(wrapper)]
    n = images.shape[0]
    data = CurvatureData(images, schedule, mc_samples, batch_size, seed, hflip, device)
    if variant.fisher == Fisher.EMPIRICAL:
        cls = PerExampleEKFAC if variant.eigencorrection else PerExampleKFAC
        extra: dict[str, Any] = {"draws": mc_samples}
        n_data, scale = n, n * mc_samples**2
    else:
        cls = EKFACLinearOperator if variant.eigencorrection else KFACLinearOperator
        extra = {}
        n_data = scale = n * mc_samples
    rows_per_point = n * mc_samples // n_data
    op = cls(
        wrapper,
        nn.MSELoss(reduction="sum"),
        params,
        data,
        progressbar=progress,
        check_deterministic=False,  # factors are computed once (the check would compute them twice)
        seed=seed,
        fisher_type=variant.fisher.value,
        mc_samples=1,  # one sampled target per (example, draw) pair
        kfac_approx=variant.approx.value,
        num_per_example_loss_terms=1,
        separate_weight_and_bias=True,
        num_data=n_data,
        batch_size_fn=lambda X: X["x"].shape[0] // rows_per_point,
        **extra,
    )
    return op, scale


def fit_curvature(
    model: nn.Module,
    images: torch.Tensor,
    schedule: Schedule,
    variant: Variant,
    mc_samples: int,
    batch_size: int,
    seed: int,
    hflip: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Curvature:
    """Fit (E)K-FAC on every Linear/Conv2d layer of ``model`` (eval mode) over all training examples.

    Args:
        model: The diffusers U-Net (EMA weights).
        images: Training images ``[N, C, H, W]`` in model space.
        schedule: Noise schedule.
        variant: Fisher type, expand/reduce, eigenvalue correction.
        mc_samples: (t, ε) draws per training example (250 in the paper).
        batch_size: Training examples per curvlinops batch.
        seed: Seed of the draws (and of the MC-Fisher's sampled targets).
        hflip: Treat random horizontal flips as part of the data distribution.
        device: Torch device.
        progress: Progress bars.
    """
    wrapper = FlatEps(model.to(device).eval())
    op, scale = build_operator(wrapper, images, schedule, variant, mc_samples, batch_size, seed, hflip, device, progress)
    args = {
        "fisher": variant.fisher.value,
        "approx": variant.approx.value,
        "eigencorrection": variant.eigencorrection,
        "mc_samples": mc_samples,
        "batch_size": batch_size,
        "seed": seed,
        "hflip": hflip,
        "n_train": images.shape[0],
        "loss": "sum over pixels of (eps - eps_theta)^2; factors approximate the GGN of its data-set mean",
    }
    return curvature_from_operator(op, wrapper, scale, variant, args)


def save_curvature(curv: Curvature, path: str | Path, config: Mapping[str, Any] | None = None) -> Path:
    """Write factors (float32) and eigendecompositions (float64) with the fit's arguments."""
    data: dict[str, Any] = {
        "param_names": np.asarray(curv.param_names),
        "param_shapes": np.asarray([list(s) + [0] * (4 - len(s)) for s in curv.param_shapes], dtype=np.int64),
        "param_ndim": np.asarray([len(s) for s in curv.param_shapes], dtype=np.int64),
        "modules": np.asarray([layer.module for layer in curv.layers]),
    }
    for k, layer in enumerate(curv.layers):
        g = f"layers/{k}"
        data[f"{g}/param_index"] = np.asarray([layer.params.get("weight", -1), layer.params.get("bias", -1)])
        for name in ("A", "G", "QA", "LA", "QG", "LG"):
            value = getattr(layer, name)
            if value is not None:
                data[f"{g}/{name}"] = value.cpu().numpy()
        for i, v in layer.corrected.items():
            data[f"{g}/corrected_{i}"] = v.cpu().numpy()
    return write_h5(path, data, config=config, attrs=curv.args)


def load_curvature(path: str | Path, device: str | torch.device = "cpu") -> Curvature:
    """Read a curvature file written by :func:`save_curvature`, its tensors on ``device`` (where the gradients it
    rotates are: :meth:`Curvature.rotate` would otherwise copy every eigenbasis there on every call)."""
    art = read_h5(path, expect={"param_names": (None,), "modules": (None,)})
    shapes = [tuple(int(x) for x in s[:nd]) for s, nd in zip(art["param_shapes"], art["param_ndim"], strict=True)]
    layers = []
    for k, module in enumerate(art["modules"]):
        g = f"layers/{k}"
        w, b = (int(x) for x in art[f"{g}/param_index"])
        pos = {kind: i for kind, i in (("weight", w), ("bias", b)) if i >= 0}
        get = lambda name, g=g: (torch.from_numpy(art[f"{g}/{name}"]).to(device)  # noqa: E731
                                 if f"{g}/{name}" in art.data else None)
        corr = {i: torch.from_numpy(art[f"{g}/corrected_{i}"]).to(device) for i in pos.values()
                if f"{g}/corrected_{i}" in art.data}
        layers.append(Layer(str(module), pos, get("A"), get("G"), get("QA"), get("LA"), get("QG"), get("LG"), corr))
    variant = Variant.from_name(art.attrs["variant"])
    args = {k: v for k, v in art.attrs.items() if k not in (*PROVENANCE_ATTRS, CHECKSUM_ATTR)}
    return Curvature(variant, layers, [str(s) for s in art["param_names"]], shapes, args)
