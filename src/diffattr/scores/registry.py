"""The registry of attribution methods: the one list the workflow, the evaluation, the figures and the cost
estimate read. Torch-free (the Snakefile imports it at parse time).

K-FAC is a *family*: ``kfac`` in ``evaluate.methods`` means every configured curvature variant
(``kfac_mc_expand``, ``ekfac_empirical_reduce``, …), all scored together by the rule ``compute_kfac_scores``.
Every other method is one :class:`MethodInfo` here and is scored by the generic rule ``compute_scores``
(``scores/{method}/{query}.h5``) through its scorer, a function ``(sections, inputs, queries, progress) ->
(score files, timings)`` (see :mod:`diffattr.scores.base`).

Adding a method: write its scorer module, add its entry below and its name to the ``evaluate.methods`` enum of
the config schema. It then gets a rule job, LDS entries, figure bars, counterfactual retraining (if
``counterfactual``) and a line in ``make estimate`` with no other edit.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from diffattr.config import configured_variants

KFAC = "kfac"


@dataclass(frozen=True)
class MethodInfo:
    """One attribution method.

    Attributes:
        name: Score-file folder, ``evaluate.methods`` value, wildcard of ``compute_scores``.
        label: Display name in figures and tables.
        scorer: ``module:function`` of its scorer (imported only when scoring).
        sections: Config keys its arguments come from (dotted for a single key, e.g. ``train.hflip``); exactly
            these are the ``args`` param of its ``compute_scores`` job.
        needs_model: Scored from the full model's gradients (else from the images alone).
        counterfactual: Evaluated by retraining without its top influences (paper Fig. 3).
        gradient_passes: Passes over the training set's gradients (for ``make estimate``; 0 for similarities).
        features: The gradient output of its training features (``loss``, ``square_norm``), computed by the
            sharded rule ``compute_features`` and shared by the methods that name the same output; None: the
            scorer makes its own training rows.
    """

    name: str
    label: str
    scorer: str
    sections: tuple[str, ...]
    needs_model: bool = True
    counterfactual: bool = False
    gradient_passes: int = 1
    features: str | None = None

    def load(self) -> Callable[..., Any]:
        """The scorer function."""
        module, function = self.scorer.split(":")
        return getattr(importlib.import_module(module), function)


_GRADIENTS = ("influence", "diffusion", "train.hflip")

METHODS: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("trak", "TRAK", "diffattr.scores.trak:score_trak", ("trak", *_GRADIENTS), counterfactual=True,
               features="loss"),
    MethodInfo("dtrak", "D-TRAK", "diffattr.scores.trak:score_dtrak", ("trak", *_GRADIENTS), counterfactual=True,
               features="square_norm"),
    MethodInfo("trak_fp16", "TRAK (float16)", "diffattr.scores.trak:score_trak_fp16", ("trak", *_GRADIENTS),
               features="loss"),
    MethodInfo("graddot", "Gradient dot product", "diffattr.scores.graddot:score", _GRADIENTS),
    MethodInfo("clip", "CLIP", "diffattr.scores.clip:score_clip", ("clip",), needs_model=False, gradient_passes=0),
)}


def _pick(config: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for key in keys:
        value: Any = config
        for part in key.split("."):
            value = value[part]
        out[key] = value
    return out


def method_sections(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The config values a method declares (:attr:`MethodInfo.sections`), keyed by their dotted names."""
    return _pick(config, METHODS[name].sections)


KFAC_SECTIONS = ("influence", "train.hflip")


def attribution_sections(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The config values ``diffattr attribute`` needs for a method: a K-FAC variant's :data:`KFAC_SECTIONS`, or
    the registered method's own sections."""
    if not is_kfac(name) and name not in METHODS:
        raise ValueError(f"unknown method {name!r}: a K-FAC variant (e.g. kfac_mc_expand) or one of {sorted(METHODS)}")
    return _pick(config, KFAC_SECTIONS if is_kfac(name) else METHODS[name].sections)


def is_kfac(method: str) -> bool:
    """Whether a score method is a K-FAC variant (``kfac_…`` or ``ekfac_…``)."""
    return method.split("_", 1)[0] in ("kfac", "ekfac")


def family(method: str) -> str:
    """``kfac`` for every (E)K-FAC variant, else the method name."""
    return KFAC if is_kfac(method) else method


def label(method: str) -> str:
    """Display name: K-FAC variants spelled out (``K-FAC (mc, expand)``, ``EK-FAC (empirical, reduce)``), the
    recommended ``kfac_mc_expand`` plain ``K-FAC``; ``<variant>_grad<n>`` (another gradient MC count, Figs. 7/9)
    adds ``, n gradient samples``."""
    if method in METHODS:
        return METHODS[method].label
    base, _, count = method.partition("_grad")
    if is_kfac(base) and base.count("_") == 2:
        kind, fisher, approx = base.split("_")
        name = "EK-FAC" if kind == "ekfac" else "K-FAC"
        name = name if base == "kfac_mc_expand" else f"{name} ({fisher}, {approx})"
        return f"{name}, {count} gradient samples" if count else name
    return method


def evaluated_methods(config: Mapping[str, Any]) -> list[str]:
    """Score methods of ``evaluate.methods``: every K-FAC variant for ``kfac``, then the others in registry order."""
    families = config["evaluate"]["methods"]
    kfac = configured_variants(config) if KFAC in families else []
    return kfac + [m for m in METHODS if m in families]


def counterfactual_methods(config: Mapping[str, Any]) -> list[str]:
    """Methods retrained against in the counterfactual evaluation: the first K-FAC variant, then every evaluated
    method marked ``counterfactual``."""
    families = config["evaluate"]["methods"]
    out = [configured_variants(config)[0]] if KFAC in families else []
    return out + [m for m in METHODS if m in families and METHODS[m].counterfactual]


def counterfactual_plan(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The retraining runs of the counterfactual evaluation, one per row (model id ``cf<row>``).

    For each of the first ``evaluate.counterfactual_samples`` samples, each counterfactual method
    (:func:`counterfactual_methods`: the first K-FAC variant, TRAK, D-TRAK) and each
    fraction: remove that method's top fraction of training examples for the sample's loss. Plus one random removal
    per fraction (shared by all samples).
    """
    ev = config["evaluate"]
    methods = counterfactual_methods(config)
    rows = [{"method": "random", "sample": -1, "fraction": float(p)} for p in ev["counterfactual_fractions"]]
    for s in range(min(ev["counterfactual_samples"], config["sample"]["n_samples"])):
        for m in methods:
            rows.extend({"method": m, "sample": s, "fraction": float(p)} for p in ev["counterfactual_fractions"])
    return rows
