"""Stages of ``rules/data.smk``: the training set and the random subsets for LDS."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from diffattr.data import draw_subsets, load_source, resize, select, write_train
from diffattr.io import read_h5, write_h5
from diffattr.stages import Paths

log = logging.getLogger(__name__)


def prepare_dataset(input: Paths, output: Paths, *, data: Mapping[str, Any]) -> None:
    """``data/train.h5`` from the ``data`` section (see :func:`diffattr.data.write_train`), resized to
    ``data.resize`` pixels when set."""
    raw = load_source(data)
    ds = resize(select(raw, data.get("classes"), data.get("per_class"), data["seed"]), data.get("resize"))
    counts = {n: int((ds.labels == i).sum()) for i, n in enumerate(ds.class_names)}
    log.info("training set: %d images %s, classes %s", len(ds.images), ds.images.shape[1:], counts)
    write_train(ds, output.train, data)


def make_subsets(input: Paths, output: Paths, *, subsets: Mapping[str, Any]) -> None:
    """``data/subsets.h5``: ``masks`` bool ``[M, N]`` (True = kept), ``seeds`` int64 ``[M, K]``."""
    n = read_h5(input.train, expect={"labels": (None,)}, names=["labels"])["labels"].shape[0]
    s = subsets
    masks, seeds = draw_subsets(n, s["n_subsets"], s["fraction"], s["seeds_per_subset"], s["seed"])
    write_h5(output.subsets, {"masks": masks, "seeds": seeds}, config={"subsets": dict(s)}, attrs={"n_train": n})
