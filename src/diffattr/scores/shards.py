"""Sharded scoring (scatter/gather): split a scoring job so that no job is long and none makes more than one pass
over the training set.

Two axes, each with its own artefact:

- **Samples** (``influence.sample_shards``): a K-FAC scoring job scores the queries of a contiguous range of the
  generated samples (their query draws are those of their place among all samples, so a sample's gradients do not
  depend on the sharding) and writes ordinary score files ``[n_damping, s1 - s0, N]`` with the range in the
  ``samples`` attribute; :func:`gather_score_shards` concatenates them into the study's score files. The query
  bank, and so the passes over the training set, shrink with the shard.
- **Training examples** (``trak.feature_shards``): TRAK's and D-TRAK's projected training features ``[N, k]`` are
  computed in ranges of training examples (:func:`write_features`), gathered by the scoring job
  (:class:`FeatureFiles`, a cache that serves them), which then only computes the query side.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffattr.io import ArtefactError, read_h5, write_h5
from diffattr.scores.io import read_scores, write_scores


def shard_bounds(n: int, n_shards: int) -> list[tuple[int, int]]:
    """``n_shards`` contiguous ranges ``(start, end)`` covering ``0..n`` (sizes differ by at most one).

    Raises:
        ValueError: For fewer than one shard or more shards than items.
    """
    if n_shards < 1 or n_shards > max(n, 1):
        raise ValueError(f"cannot split {n} items into {n_shards} shards (need 1 <= shards <= {n})")
    edges = np.linspace(0, n, n_shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def gather_score_shards(shards: Sequence[str | Path], outputs: Sequence[str | Path]) -> None:
    """Concatenate sample-sharded score files into one file per (method, query) along the sample axis.

    Each output ``.../{method}/{query}.h5`` is made from every shard file with the same ``{method}/{query}``; their
    ``samples`` ranges must tile ``0..n_samples`` exactly. Arguments and provenance come from the first shard;
    ``timings`` are summed over shards (``shards``: their number).

    Raises:
        ArtefactError: When shards are missing, overlap or disagree in dampings or arguments.
    """
    by_key: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for p in map(Path, shards):
        by_key[(p.parent.name, p.stem)].append(p)
    for out in map(Path, outputs):
        key = (out.parent.name, out.stem)
        arts = sorted((read_scores(p) for p in by_key.get(key, [])), key=lambda a: a.attrs["samples"][0])
        if not arts:
            raise ArtefactError(f"no score shards for {key[0]}/{key[1]} among {len(shards)} shard files")
        first = arts[0]
        total = int(first.attrs["n_samples"])
        ranges = [tuple(int(v) for v in a.attrs["samples"]) for a in arts]
        if [r[0] for r in ranges] != [0, *[r[1] for r in ranges[:-1]]] or ranges[-1][1] != total:
            raise ArtefactError(f"the shards of {key[0]}/{key[1]} cover samples {ranges}, not 0..{total} "
                                f"({[str(a.path) for a in arts]})")
        for a in arts[1:]:
            if not np.array_equal(a["dampings"], first["dampings"]) or a.attrs["args"] != first.attrs["args"]:
                raise ArtefactError(f"{a.path} and {first.path} were scored with different arguments; rerun the "
                                    "shards with one config")
        timings: dict[str, float] = defaultdict(float)
        for a in arts:
            for k, v in json.loads(a.attrs["timings"]).items():
                timings[k] += float(v)
        timings["shards"] = float(len(arts))
        attrs = {k: v for k, v in first.attrs.items() if k not in {"samples", "n_samples", "timings", "method",
                                                                     "measurement", "predicts", "default_damping"}
                 and not k.startswith(("diffattr_", "git_", "config_", "schema_", "content_"))}
        default = float(first.attrs["default_damping"])
        write_scores(out, np.concatenate([a["scores"] for a in arts], axis=1), first["dampings"],
                     first.attrs["method"], first.attrs["measurement"], None if np.isnan(default) else default,
                     first.attrs["predicts"], config=first.config,
                     attrs={**attrs, "args": json.loads(first.attrs["args"]), "timings": dict(timings)})


def write_features(path: str | Path, features: torch.Tensor, start: int, end: int, n_total: int,
                   args: Mapping[str, Any]) -> None:
    """Write projected training features ``[end - start, k]`` of training examples ``start..end`` of ``n_total``."""
    write_h5(path, {"features": features.detach().cpu().float().numpy()}, config=dict(args),
             attrs={"examples": [start, end], "n_total": n_total, "args": dict(args)})


class FeatureFiles:
    """A cache (see :mod:`diffattr.scores.cache`) that serves training features gathered from shard files.

    ``matrix(key, compute)`` returns the concatenation of the shards (checked to tile ``0..N``) instead of calling
    ``compute``; every other key is computed.

    Args:
        paths: Shard files written by :func:`write_features`.
        key: The cache key they stand for (e.g. ``loss_features``).
        args: The arguments the scoring job would compute them with; shards made with others are refused.
    """

    def __init__(self, paths: Sequence[str | Path], key: str, args: Mapping[str, Any]) -> None:
        self.paths, self.key, self.args = [Path(p) for p in paths], key, json.loads(json.dumps(dict(args)))

    def matrix(self, key: str, compute: Callable[[], torch.Tensor], *_: Any) -> torch.Tensor:
        if key != self.key:
            return compute()
        arts = sorted((read_h5(p, expect={"features": (None, None)}) for p in self.paths),
                      key=lambda a: a.attrs["examples"][0])
        ranges = [tuple(int(v) for v in a.attrs["examples"]) for a in arts]
        total = int(arts[0].attrs["n_total"])
        if [r[0] for r in ranges] != [0, *[r[1] for r in ranges[:-1]]] or ranges[-1][1] != total:
            raise ArtefactError(f"the feature shards cover training examples {ranges}, not 0..{total}")
        for a in arts:
            if json.loads(a.attrs["args"]) != self.args:
                raise ArtefactError(f"{a.path} was computed with other arguments than this scoring job's "
                                    f"({json.loads(a.attrs['args'])} != {self.args}); rerun compute_features")
        return torch.from_numpy(np.concatenate([a["features"] for a in arts]))

    def rows(self, key: str, n: int, batch_size: int, fn: Callable[[torch.Tensor], torch.Tensor],
             group_sizes: Sequence[int] | None = None, progress: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
        return fn
