"""The training set artefact (``train.h5``): class selection and per-class sampling on top of a source."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from diffattr.data.sources import DataError, RawImages, load_cifar10_python, load_digits, load_image_folder
from diffattr.io import Artefact, read_h5, write_h5

log = logging.getLogger(__name__)

TRAIN_DATASETS = ("images", "labels", "source_index", "class_names")


def load_source(data_cfg: Mapping[str, Any]) -> RawImages:
    """Load the images of the configured classes from the configured source (``config['data']``)."""
    source = data_cfg["source"]
    classes = data_cfg.get("classes")
    if source == "digits":
        return load_digits(classes)
    if source == "cifar10_python":
        return load_cifar10_python(data_cfg["url"], data_cfg["sha256"], data_cfg["cache_dir"], classes)
    if source == "image_folder":
        return load_image_folder(data_cfg["path"], data_cfg.get("split"), classes)
    raise DataError(f"unknown data.source {source!r}")


def select(raw: RawImages, classes: list[str] | None, per_class: int | None, seed: int) -> RawImages:
    """Keep ``classes`` (in the given order; labels are re-numbered 0..C-1) and sample ``per_class`` images each.

    Sampling is without replacement with ``numpy.random.default_rng(seed)``, class by class; within a class the
    kept images stay in source order.
    """
    names = list(classes) if classes is not None else list(raw.class_names)
    rng = np.random.default_rng(seed)
    idx, labels = [], []
    for new_label, name in enumerate(names):
        if name not in raw.class_names:
            raise DataError(f"unknown class name {name!r}; available: {raw.class_names}")
        members = np.flatnonzero(raw.labels == raw.class_names.index(name))
        if per_class is not None:
            if per_class > len(members):
                raise DataError(
                    f"class {name!r} has {len(members)} images, fewer than data.per_class={per_class}"
                )
            members = np.sort(rng.choice(members, size=per_class, replace=False))
        if len(members) == 0:
            raise DataError(f"class {name!r} has no images")
        idx.append(members)
        labels.append(np.full(len(members), new_label, dtype=np.int64))
    order = np.concatenate(idx)
    files = None if raw.file_names is None else [raw.file_names[i] for i in order]
    return RawImages(raw.images[order], np.concatenate(labels), raw.source_index[order], names, files)


def resize(ds: RawImages, size: int | None) -> RawImages:
    """Images downsampled (or upsampled) to ``size`` x ``size`` pixels (``data.resize``; None: unchanged).

    Area interpolation (``torch.nn.functional.interpolate``, mode ``area``: a 32 -> 16 resize averages 2x2
    blocks), rounded back to uint8.
    """
    if size is None or ds.images.shape[-2:] == (size, size):
        return ds
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(ds.images)).float()
    mode = "area" if size <= min(x.shape[-2:]) else "bilinear"
    y = F.interpolate(x, size=(size, size), mode=mode)
    images = y.round().clamp(0, 255).to(torch.uint8).numpy()
    return RawImages(images, ds.labels, ds.source_index, ds.class_names, ds.file_names)


def write_train(ds: RawImages, out: str | Path, data_cfg: Mapping[str, Any]) -> Path:
    """Write the training set ``train.h5`` (with the ``data`` section that made it).

    Datasets: ``images`` uint8 ``[N, C, H, W]``, ``labels`` int64 ``[N]`` (index into ``class_names``),
    ``source_index`` int64 ``[N]``, ``class_names`` str ``[n_classes]``.
    """
    return write_h5(
        out,
        {
            "images": ds.images,
            "labels": ds.labels,
            "source_index": ds.source_index,
            "class_names": np.asarray(ds.class_names),
        },
        config={"data": dict(data_cfg)},
        attrs={"source": data_cfg["source"], "n_images": len(ds.images)},
    )


def read_train(path: str | Path) -> Artefact:
    """Read ``train.h5`` with shape checks."""
    art = read_h5(path, expect={"images": (None, None, None, None), "labels": (None,), "source_index": (None,)})
    n = art["images"].shape[0]
    if art["labels"].shape[0] != n or art["source_index"].shape[0] != n:
        raise DataError(f"{path}: images, labels and source_index differ in length")
    return art
