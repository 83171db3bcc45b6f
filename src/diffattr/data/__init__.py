"""Data sources, the training-set artefact and random subsets."""

from diffattr.data.dataset import load_source, read_train, resize, select, write_train
from diffattr.data.sources import (
    DataError,
    RawImages,
    fetch,
    load_cifar10_python,
    load_digits,
    load_image_folder,
)
from diffattr.data.subsets import draw_subsets, read_subsets

__all__ = [
    "DataError",
    "RawImages",
    "draw_subsets",
    "fetch",
    "load_cifar10_python",
    "load_digits",
    "load_image_folder",
    "load_source",
    "read_subsets",
    "read_train",
    "resize",
    "select",
    "write_train",
]
