"""Experiment configuration: loading, validation against the JSON Schema, defaults.

The schema lives in ``diffattr/schemas/config.schema.yaml`` (the top-level ``schemas/`` folder links to it).
Validation fills in defaults and reports every problem with the dotted key and the allowed values.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from diffattr.queries import TIMESTEP_LOSS, query_names

SCHEMA_VERSION = 1


class ConfigError(ValueError):
    """A config file or value is invalid; the message names the key and what is allowed."""


def schema() -> dict[str, Any]:
    """Return the config JSON Schema as a dict."""
    text = resources.files("diffattr").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def _extend_with_defaults(validator_class: type) -> type:
    # jsonschema validates but never fills defaults; this is the documented recipe
    # (python-jsonschema FAQ "Why doesn't my schema's default property set the default on my instance?").
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema_):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema_)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _extend_with_defaults(jsonschema.Draft202012Validator)


def _key(path: Any) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else str(p) for p in path]
    return ".".join(parts).replace(".[", "[") or "<top level>"


def _allowed(error: jsonschema.ValidationError) -> str:
    s = error.schema if isinstance(error.schema, dict) else {}
    v = error.validator
    if v == "additionalProperties":
        allowed = sorted(s.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        hints = []
        for k in extra:
            close = difflib.get_close_matches(k, allowed, n=1)
            hints.append(f"unknown key '{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        return "; ".join(hints) + f"; allowed keys: {', '.join(allowed)}"
    if v == "enum":
        return f"allowed values: {', '.join(map(repr, s['enum']))}"
    if v == "const":
        return f"allowed value: {s['const']!r}"
    if v in {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}:
        lo = f">= {s['minimum']}" if "minimum" in s else f"> {s['exclusiveMinimum']}" if "exclusiveMinimum" in s else ""
        hi = f"<= {s['maximum']}" if "maximum" in s else f"< {s['exclusiveMaximum']}" if "exclusiveMaximum" in s else ""
        return "allowed: a value " + " and ".join(x for x in (lo, hi) if x)
    if v == "type":
        return f"allowed type: {s['type']}"
    if v == "pattern":
        return f"allowed: strings matching {s['pattern']}"
    if "description" in s:
        return s["description"].strip()
    return ""


def validate_config(config: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Validate a config against the schema and return a copy with all defaults filled in.

    Args:
        config: The parsed config mapping.
        source: Where the config came from (a file name), used in error messages.

    Returns:
        A new dict with defaults filled in.

    Raises:
        ConfigError: Listing every invalid key with its value and the allowed values.
    """
    cfg = json.loads(json.dumps(dict(config)))  # plain, deep copy (also rejects non-JSON values early)
    validator = _DefaultFillingValidator(schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = []
        for e in errors:
            where = _key(e.absolute_path)
            allowed = _allowed(e)
            lines.append(f"  - config key '{where}': {e.message}" + (f" ({allowed})" if allowed else ""))
        raise ConfigError(f"invalid {source}:\n" + "\n".join(lines))
    _check_consistency(cfg, source)
    return cfg


def evaluation_pairs(evaluate: Mapping[str, Any], timesteps: Sequence[int]) -> list[dict[str, str]]:
    """The (scores, target) pairs of the LDS evaluation: ``evaluate.pairs`` plus the timestep matrix if asked."""
    pairs = [dict(p) for p in evaluate["pairs"]]
    if evaluate["timestep_matrix"]:
        names = query_names([TIMESTEP_LOSS], timesteps)
        pairs += [{"scores": a, "target": b} for a in names for b in names]
    return pairs


def gradient_mc_counts(influence: Mapping[str, Any]) -> list[int]:
    """``influence.gradient_mc_samples`` as a list: the first count is the one used everywhere, the others only
    score the K-FAC variants again for the damping curves per count (paper Figs. 7 and 9)."""
    counts = influence["gradient_mc_samples"]
    return [int(c) for c in counts] if isinstance(counts, list) else [int(counts)]


def timestep_draw_counts(measure: Mapping[str, Any]) -> list[int]:
    """ε draws of each of ``measure.timesteps``' losses: ``measure.timestep_mc_samples`` (one count for every
    timestep, or one per timestep; null: ``measure.mc_samples``)."""
    counts, steps = measure.get("timestep_mc_samples"), measure["timesteps"]
    if isinstance(counts, list):
        return [int(c) for c in counts]
    return [int(counts or measure["mc_samples"])] * len(steps)


def model_measurements(config: Mapping[str, Any], model_id: str) -> list[str]:
    """The measurements taken of one model: only what something reads from it. A down-weighted run serves only the
    timestep losses (Figs. 13/14); the full model and the retraining fleet every one of ``measure.measurements``.
    (The counterfactual runs are measured apart: :func:`diffattr.stages.measure.measure_counterfactuals`.)"""
    names = list(config["measure"]["measurements"])
    return [m for m in names if m == "timestep_loss"] if model_id.startswith("downweight") else names


def kfac_queries(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Query names each K-FAC variant scores: the first every one of ``influence.measurements``, the others those of
    ``influence.variant_measurements`` among them (the paper compares variants only on the loss-like measurements,
    Fig. 4), so the timestep and trajectory queries, the bulk of the query bank, are scored once."""
    icfg, steps = config["influence"], config["measure"]["timesteps"]
    first = query_names(icfg["measurements"], steps)
    others = [q for q in first if q in set(query_names(icfg.get("variant_measurements", ["loss", "elbo"]), steps))]
    return {v: first if i == 0 else others for i, v in enumerate(configured_variants(config))}


def attribute_image_count(config: Mapping[str, Any]) -> int:
    """Images named by ``attribute.queries``: one per file, one per index of a ``samples.h5:<i>,<j>`` entry."""
    return sum(len(q.split(":", 1)[1].split(",")) if ".h5:" in q else 1 for q in config["attribute"]["queries"])


def _check_consistency(cfg: dict[str, Any], source: str) -> None:
    """Cross-key checks the schema cannot express."""
    steps = cfg["measure"]["timesteps"]
    problems = []
    T = cfg["diffusion"]["num_timesteps"]
    if any(t > T for t in steps):
        problems.append(f"config key 'measure.timesteps': {steps} exceed diffusion.num_timesteps={T}")
    counts = cfg["measure"]["timestep_mc_samples"]
    if isinstance(counts, list) and len(counts) != len(steps):
        problems.append(f"config key 'measure.timestep_mc_samples': {len(counts)} counts for the {len(steps)} "
                        f"measure.timesteps {steps} (one count per timestep, or a single number)")
    else:
        per_step = dict(zip(steps, timestep_draw_counts(cfg["measure"]), strict=True))
        for t in cfg["measure"]["timestep_antithetic"]:
            if t not in per_step:
                problems.append(f"config key 'measure.timestep_antithetic': {t} is not one of measure.timesteps {steps}")
            elif per_step[t] % 2:
                problems.append(f"config key 'measure.timestep_antithetic': timestep {t} has an odd draw count "
                                f"({per_step[t]}, measure.timestep_mc_samples); antithetic draws come in pairs")
    measured = set(query_names(cfg["measure"]["measurements"], steps))
    queried = set(query_names(cfg["influence"]["measurements"], steps))
    if cfg["evaluate"]["timestep_matrix"]:
        for key in ("measure", "influence"):
            if "timestep_loss" not in cfg[key]["measurements"]:
                problems.append(f"config key 'evaluate.timestep_matrix': true needs timestep_loss in {key}.measurements")
    for i, pair in enumerate(cfg["evaluate"]["pairs"]):
        if pair["target"] not in measured:
            problems.append(f"config key 'evaluate.pairs[{i}].target': {pair['target']!r} is not measured "
                            f"(measure.measurements gives {sorted(measured)})")
        if pair["scores"] not in queried:
            problems.append(f"config key 'evaluate.pairs[{i}].scores': {pair['scores']!r} has no scores "
                            f"(influence.measurements gives {sorted(queried)})")
    shards, n_samples = cfg["influence"]["sample_shards"], cfg["sample"]["n_samples"]
    if shards > n_samples:
        problems.append(f"config key 'influence.sample_shards': {shards} exceeds sample.n_samples={n_samples} (each "
                        "shard scores at least one sample)")
    dw = cfg["ablations"]["downweight"]
    if dw["enabled"]:
        if dw["seeds_per_subset"] > cfg["subsets"]["seeds_per_subset"]:
            problems.append(f"config key 'ablations.downweight.seeds_per_subset': {dw['seeds_per_subset']} exceeds "
                            f"subsets.seeds_per_subset={cfg['subsets']['seeds_per_subset']} (seed k reuses subset "
                            "m's k-th seed)")
        if not cfg["evaluate"]["timestep_matrix"]:
            problems.append("config key 'ablations.downweight.enabled': true needs evaluate.timestep_matrix: true "
                            "(its figures are the timestep matrices on the down-weighted models)")
    for section in ("influence", "trak"):
        grid, default = cfg[section]["dampings"], cfg[section]["default_damping"]
        if not any(abs(d - default) <= 1e-9 * abs(default) for d in grid):
            problems.append(f"config key '{section}.default_damping': {default:g} is not one of {section}.dampings "
                            f"{[float(d) for d in grid]} (the default must be on the sweep's grid)")
    if problems:
        raise ConfigError(f"invalid {source}:\n" + "\n".join(f"  - {p}" for p in problems))


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config, apply optional overrides (deep-merged) and validate it.

    Args:
        path: YAML file.
        overrides: Mapping deep-merged on top of the file's content.

    Returns:
        The validated config with defaults.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level, got {type(raw).__name__}")
    if overrides:
        raw = deep_merge(raw, overrides)
    return validate_config(raw, source=str(path))


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively by ``update`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def variant_name(fisher: str, approx: str, eigencorrection: bool = False) -> str:
    """Name of a curvature variant, e.g. ``kfac_mc_expand`` or ``ekfac_empirical_reduce`` (files, score methods)."""
    return f"{'ekfac' if eigencorrection else 'kfac'}_{fisher}_{approx}"


def configured_variants(config: Mapping[str, Any]) -> list[str]:
    """Names of the curvature variants in ``influence.variants``, in config order."""
    return [variant_name(v["fisher"], v["approx"], v.get("eigencorrection", False)) for v in config["influence"]["variants"]]
