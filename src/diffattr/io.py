"""HDF5 artefacts: atomic writes with provenance, checked reads.

Every artefact carries the attributes ``diffattr_version``, ``git_commit``, ``config_json`` (the config section
that made it) and ``schema_version``. Files are written to a temporary file beside the target and renamed into
place, so a killed run never leaves a half-written artefact under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from diffattr import __version__
from diffattr.config import SCHEMA_VERSION

PROVENANCE_ATTRS = ("diffattr_version", "git_commit", "config_json", "schema_version")


class ArtefactError(ValueError):
    """An artefact is missing, unreadable, or lacks the expected datasets, shapes or attributes."""


@lru_cache(maxsize=1)
def git_commit() -> str:
    """Commit of the source tree diffattr runs from (``+dirty`` if modified), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _to_h5(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray) and value.dtype.kind not in "OUS":
        return value
    arr = np.asarray(value)
    if arr.dtype.kind in "OUS":
        return np.asarray([str(v) for v in arr.ravel()], dtype=h5py.string_dtype()).reshape(arr.shape)
    return arr


def write_h5(
    path: str | Path,
    datasets: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write datasets and provenance to an HDF5 file atomically.

    Args:
        path: Target file.
        datasets: Name -> array (numbers, bools, or strings).
        config: The config section that produced the artefact (stored as JSON).
        attrs: Extra scalar/str/array attributes (e.g. the arguments of the computation).

    Returns:
        The path written.
    """
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name, value in datasets.items():
            f.create_dataset(name, data=_to_h5(value))
        f.attrs["diffattr_version"] = __version__
        f.attrs["git_commit"] = git_commit()
        f.attrs["config_json"] = json.dumps(config or {}, sort_keys=True)
        f.attrs["schema_version"] = SCHEMA_VERSION
        for k, v in (attrs or {}).items():
            f.attrs[k] = json.dumps(v) if isinstance(v, Mapping | list | tuple) and not _numeric_seq(v) else v
    return path


def _numeric_seq(v: Any) -> bool:
    return isinstance(v, list | tuple) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v) and len(v) > 0


@dataclass
class Artefact:
    """Contents of an HDF5 artefact: datasets as numpy arrays (strings decoded) and attributes."""

    path: Path
    data: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.data[name]

    @property
    def config(self) -> dict[str, Any]:
        """The config section stored with the artefact."""
        return json.loads(self.attrs["config_json"])


def read_h5(
    path: str | Path,
    expect: Mapping[str, Sequence[int | None]] | None = None,
    names: Sequence[str] | None = None,
) -> Artefact:
    """Read an HDF5 artefact, checking provenance attributes and (optionally) dataset shapes.

    Args:
        path: The file.
        expect: Dataset name -> expected shape; ``None`` entries match any size. Missing datasets or
            mismatched shapes raise ``ArtefactError``.
        names: Datasets to load (default: all).

    Returns:
        The artefact.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"artefact not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ArtefactError(f"cannot read HDF5 artefact {path}: {exc}") from exc
    with f:
        missing = [a for a in PROVENANCE_ATTRS if a not in f.attrs]
        if missing:
            raise ArtefactError(f"{path} lacks provenance attributes {missing}: not a diffattr artefact?")
        if int(f.attrs["schema_version"]) != SCHEMA_VERSION:
            raise ArtefactError(
                f"{path} has schema_version {f.attrs['schema_version']}, this diffattr reads {SCHEMA_VERSION}"
            )
        for name, shape in (expect or {}).items():
            if name not in f:
                raise ArtefactError(f"{path} has no dataset '{name}' (has: {sorted(f)})")
            actual = f[name].shape
            if len(actual) != len(shape) or any(s is not None and s != a for s, a in zip(shape, actual, strict=False)):
                raise ArtefactError(f"{path}: dataset '{name}' has shape {actual}, expected {tuple(shape)}")
        art = Artefact(path=path, attrs={k: _attr(v) for k, v in f.attrs.items()})
        if names is None:
            names = []
            f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
        for name in names:
            ds = f[name]
            art.data[name] = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
    return art


def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v
