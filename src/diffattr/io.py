"""HDF5 artefacts: atomic writes with provenance and content checksums, checked reads.

Every artefact carries the attributes ``diffattr_version``, ``git_commit``, ``config_json`` (the config section
that made it) and ``schema_version``, and ``content_sha256``: a SHA-256 of each dataset (name, dtype, shape, bytes),
verified whenever the dataset is read. Files are written to a temporary file beside the target and renamed into
place, so a killed run never leaves a half-written artefact under the final name; a file truncated or modified
afterwards is named on read, with what to do (:func:`fix_hint`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
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
CHECKSUM_ATTR = "content_sha256"  # written always; artefacts from before it was introduced are read unverified

#: The rule that writes each artefact of a study (a pattern of its path under ``results/<exp>/``), for error
#: messages only; ``tests/workflow/test_stage_contract.py`` checks every rule named here against the workflow.
PRODUCERS = [
    (r"data/train\.h5$", "prepare_dataset"),
    (r"data/subsets\.h5$", "make_subsets"),
    (r"samples/samples\.h5$", "sample_images"),
    (r"measurements/(measurements|downweight)\.h5$", "gather_measurements"),
    (r"measurements/counterfactual\.h5$", "measure_counterfactuals"),
    (r"measurements/models/subset", "measure_subset"),
    (r"measurements/models/", "measure_model"),
    (r"curvature/", "fit_curvature"),
    (r"scores/e?kfac_[a-z]+_[a-z]+_grad\d+/", "compute_kfac_grad_scores"),
    (r"shards/kfac/", "compute_kfac_scores"),
    (r"shards/features/", "compute_features"),
    (r"scores/e?kfac_", "gather_kfac_scores"),
    (r"scores/", "compute_scores"),
    (r"counterfactual/removals\.h5$", "select_counterfactuals"),
    (r"(^|/)models/subset", "train_subset"),
    (r"models/", "train_model"),
    (r"metrics/gradient_mc\.json$", "gradient_mc_ablation"),
    (r"metrics/compression\.json$", "compression_ablation"),
    (r"metrics/downweight\.json$", "downweight_ablation"),
    (r"metrics/counterfactual\.json$", "evaluate_counterfactuals"),
    (r"metrics/", "compute_lds"),
]


def fix_hint(path: str | Path) -> str:
    """What to do about an unreadable artefact: delete it and rerun, naming the rule that rebuilds it."""
    p = Path(path).as_posix()
    rule = next((r for pattern, r in PRODUCERS if re.search(pattern, p)), None)
    return f"delete {path} and rerun" + (f" (or `snakemake --forcerun {rule}`)" if rule else "")


def read_json(path: str | Path) -> Any:
    """A JSON artefact (``lds.json``, ``train_info.json``, ...), with a named error if it is missing or corrupt."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ArtefactError(f"artefact not found: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtefactError(f"{path} is not valid JSON (truncated or corrupt: {exc}); {fix_hint(path)}") from exc


def _dataset_sha256(name: str, value: np.ndarray) -> str:
    h = hashlib.sha256(f"{name}|{value.dtype.str}|{value.shape}|".encode())
    h.update(np.ascontiguousarray(value).tobytes() if value.dtype.kind not in "OUS" else
             "\x00".join(map(str, value.ravel())).encode())
    return h.hexdigest()


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
        sums = {}
        for name, value in datasets.items():
            arr = _to_h5(value)
            f.create_dataset(name, data=arr)
            sums[name] = _dataset_sha256(name, arr)
        f.attrs[CHECKSUM_ATTR] = json.dumps(sums, sort_keys=True)
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
        raise ArtefactError(f"{path} is not a readable HDF5 file (truncated or corrupt: {exc}); {fix_hint(path)}") \
            from exc
    try:
        with f:
            return _read_artefact(f, path, expect, names)
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        if isinstance(exc, ArtefactError):
            raise
        raise ArtefactError(f"{path} is corrupt ({type(exc).__name__}: {exc}); {fix_hint(path)}") from exc


def _read(ds: h5py.Dataset) -> np.ndarray:
    return ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]


def _read_artefact(f: h5py.File, path: Path, expect, names) -> Artefact:
    missing = [a for a in PROVENANCE_ATTRS if a not in f.attrs]
    if missing:
        raise ArtefactError(f"{path} lacks provenance attributes {missing}: not a diffattr artefact, or written "
                            f"by an older diffattr; {fix_hint(path)}")
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
    sums = json.loads(f.attrs[CHECKSUM_ATTR]) if CHECKSUM_ATTR in f.attrs else None
    for name in names:
        art.data[name] = _read(f[name])
        if sums is not None and _dataset_sha256(name, art.data[name]) != sums.get(name):
            raise ArtefactError(f"{path}: dataset '{name}' does not match its checksum (the file was modified or "
                                f"is corrupt); {fix_hint(path)}")
    return art


def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v
