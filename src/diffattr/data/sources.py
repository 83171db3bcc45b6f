"""Data sources. Each returns a :class:`RawImages` with every image of the requested classes.

- ``digits``: scikit-learn's embedded 8x8 handwritten digits (1,797 images, offline).
- ``cifar10_python``: the official ``cifar-10-python.tar.gz`` from a URL (http(s) or file://), checksum-verified
  and cached.
- ``image_folder``: a directory or tarball with one sub-folder per class, optionally below a split folder
  (``train/<class>/<file>``), e.g. ``../shared/datasets/cifar10-jpeg.tar.gz``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm.auto import tqdm

from diffattr.io import atomic_path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
CIFAR10_BATCHES = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]
CIFAR10_META = "cifar-10-batches-py/batches.meta"


class DataError(ValueError):
    """Bad input data: missing file, checksum mismatch, wrong layout, unknown class, unreadable image."""


@dataclass
class RawImages:
    """Images of a source, restricted to some classes.

    Attributes:
        images: uint8 ``[N, C, H, W]``.
        labels: int64 ``[N]``, index into ``class_names``.
        source_index: int64 ``[N]``, position of each image in its source (CIFAR batch order, sorted file list).
        class_names: names of all classes of the source (labels index it).
        file_names: each image's path inside an image folder or tarball (None for other sources).
    """

    images: np.ndarray
    labels: np.ndarray
    source_index: np.ndarray
    class_names: list[str]
    file_names: list[str] | None = None


def _check_classes(wanted: Iterable[str] | None, available: list[str], where: str) -> list[str]:
    if wanted is None:
        return list(available)
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise DataError(f"unknown class name(s) {unknown} in {where}; available: {available}")
    return list(wanted)


# --- digits ---------------------------------------------------------------------------------------------------
def load_digits(classes: list[str] | None = None) -> RawImages:
    """scikit-learn's digits as uint8 ``[N, 1, 8, 8]`` (pixel values 0..16 rescaled to 0..255)."""
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    names = [str(i) for i in range(10)]
    keep = _check_classes(classes, names, "scikit-learn digits")
    mask = np.isin(d.target, [names.index(c) for c in keep])
    images = np.round(d.images[mask] * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return RawImages(images, d.target[mask].astype(np.int64), np.flatnonzero(mask).astype(np.int64), names)


# --- download -------------------------------------------------------------------------------------------------
def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, sha256: str, cache_dir: str | Path) -> Path:
    """Download ``url`` into ``cache_dir`` (once) and verify its sha256.

    A cached file is re-verified; a download is verified before it is moved into the cache, so the cache never
    holds a file with the wrong checksum.

    Raises:
        DataError: The URL cannot be read, or the checksum differs (expected and actual are shown).
    """
    name = PurePosixPath(urllib.request.urlparse(url).path).name or "download"
    target = Path(cache_dir) / name
    if target.is_file():
        actual = sha256_of(target)
        if actual != sha256:
            raise DataError(
                f"cached file {target} has sha256 {actual}, expected {sha256}; delete it to download again, "
                f"or fix data.sha256 in the config"
            )
        log.info("using cached %s", target)
        return target
    log.info("downloading %s -> %s", url, target)
    with atomic_path(target) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}") as bar:
                    while block := resp.read(1 << 20):
                        out.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DataError(f"cannot download {url}: {exc} (set data.url to a mirror or a file:// copy)") from exc
        actual = sha256_of(tmp)
        if actual != sha256:
            raise DataError(f"checksum mismatch for {url}: expected sha256 {sha256} (config key data.sha256), got "
                            f"{actual}; a different file sits at data.url, or data.sha256 is wrong")
    return target


# --- CIFAR-10 python tarball ----------------------------------------------------------------------------------
def load_cifar10_python(
    url: str, sha256: str, cache_dir: str | Path, classes: list[str] | None = None
) -> RawImages:
    """The 50,000 CIFAR-10 training images from the official python tarball, ``[N, 3, 32, 32]`` uint8."""
    archive = fetch(url, sha256, cache_dir)
    try:
        tar = tarfile.open(archive, "r:*")
    except tarfile.TarError as exc:
        raise DataError(f"{archive} is not a readable tar archive: {exc}") from exc
    with tar:
        members = set(tar.getnames())
        missing = [m for m in [CIFAR10_META, *CIFAR10_BATCHES] if m not in members]
        if missing:
            raise DataError(f"{archive} does not have the cifar-10-python layout: missing {missing}")

        def unpickle(name: str) -> dict:
            # The official release is a set of Python pickles; the archive's checksum was verified above.
            f = tar.extractfile(name)
            return pickle.load(f, encoding="bytes")  # noqa: S301

        names = [n.decode() for n in unpickle(CIFAR10_META)[b"label_names"]]
        data, labels = [], []
        for batch in tqdm(CIFAR10_BATCHES, desc="read CIFAR-10 batches"):
            d = unpickle(batch)
            data.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(d[b"labels"], dtype=np.int64))
    images, labels_all = np.concatenate(data), np.concatenate(labels)
    keep = _check_classes(classes, names, str(archive))
    mask = np.isin(labels_all, [names.index(c) for c in keep])
    return RawImages(images[mask], labels_all[mask], np.flatnonzero(mask).astype(np.int64), names)


# --- image folder (directory or tarball) ----------------------------------------------------------------------
def _iter_folder(root: Path) -> Iterator[tuple[str, Path | None]]:
    """``(relative name, file)`` of every file, and ``(relative name + "/", None)`` of every directory."""
    for p in sorted(root.rglob("*")):
        if p.is_file():
            yield p.relative_to(root).as_posix(), p
        elif p.is_dir():
            yield p.relative_to(root).as_posix() + "/", None


def _iter_tar(path: Path) -> Iterator[tuple[str, tarfile.TarInfo | None]]:
    """As :func:`_iter_folder`, for the members of a tarball."""
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{path} is not a readable tar archive: {exc}") from exc
    with tar:
        for m in tar.getmembers():
            if m.isfile():
                yield m.name, m
            elif m.isdir():
                yield m.name.rstrip("/") + "/", None


def _class_folder(name: str, split: str | None) -> str | None:
    """The class a directory entry (``.../``) is the folder of, in the layout ``[<split>/]<class>/``."""
    parts = PurePosixPath(name.rstrip("/")).parts
    if split is None:
        return parts[-1] if len(parts) == 1 else None
    return parts[-1] if len(parts) >= 2 and parts[-2] == split else None


FLAT_CLASS = "images"  # the one class of a flat folder (images directly in it)


def _class_and_split(name: str, split: str | None, flat: bool = False) -> tuple[str, str] | None:
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    if flat:
        return (FLAT_CLASS, parts[0]) if len(parts) == 1 else None
    if len(parts) < 2:
        return None
    if split is None:
        return parts[-2], parts[-1]
    if len(parts) >= 3 and parts[-3] == split:
        return parts[-2], parts[-1]
    return None


def load_image_folder(path: str | Path, split: str | None = "train", classes: list[str] | None = None) -> RawImages:
    """Images from ``[<prefix>/]<split>/<class>/<file>`` in a directory or tarball.

    With ``split=None`` the layout is ``<class>/<file>``, or flat (``<file>`` directly in the folder, one class named
    ``images``) when no class folder holds images. Class names are the sorted sub-folder names (label order);
    ``source_index`` is the position in the sorted list of all image files of the split; ``file_names`` their paths.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise DataError(f"image folder or archive not found: {path}")
    is_tar = path.is_file()
    entries = list(_iter_tar(path) if is_tar else _iter_folder(path))
    layout = "<split>/<class>/<image>".replace("<split>", split) if split else "<class>/<image>"
    found: list[tuple[str, str, object]] = []  # (class, full name, handle)
    folders: set[str] = set()
    for name, handle in entries:
        if handle is None:
            if (c := _class_folder(name, split)) is not None:
                folders.add(c)
            continue
        cs = _class_and_split(name, split)
        if cs is not None:
            found.append((cs[0], name, handle))
    if not found and split is None and classes is None:  # a flat folder of images
        found = [(FLAT_CLASS, n, h) for n, h in entries if h is not None and _class_and_split(n, None, flat=True)]
        folders = set()
    considered = folders & set(classes) if classes else folders
    empty = sorted(considered - {c for c, _, _ in found})
    if empty:
        raise DataError(f"class folder(s) {empty} in {path} hold no images ({', '.join(sorted(IMAGE_SUFFIXES))} "
                        f"files in {layout}); add images, or leave the class out of data.classes")
    if not found:
        sample = sorted({PurePosixPath(n).parts[0] for n, _ in entries})[:10]
        raise DataError(
            f"{path} has no images in the layout {layout} (top-level entries: {sample}); "
            f"check data.path and data.split"
        )
    found.sort(key=lambda x: (x[0], x[1]))
    names = sorted({c for c, _, _ in found})
    keep = set(_check_classes(classes, names, str(path)))
    wanted = [(i, c, n, h) for i, (c, n, h) in enumerate(found) if c in keep]

    def decode(raw: bytes, name: str) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(raw)) as im:
                im.load()
                arr = np.asarray(im.convert("L" if im.mode in {"1", "L", "I", "I;16", "F"} else "RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"unreadable image {name} in {path}: {exc}") from exc
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    images: list[np.ndarray] = []
    if is_tar:
        by_name = {n: (i, c) for i, c, n, _ in wanted}
        blobs: dict[str, bytes] = {}
        with tarfile.open(path, "r:*") as tar, tqdm(total=len(by_name), desc=f"read {path.name}") as bar:
            for m in tar:  # one sequential pass: compressed tarballs are slow to seek
                if m.name in by_name:
                    blobs[m.name] = tar.extractfile(m).read()
                    bar.update()
        for _, _, n, _ in wanted:
            images.append(decode(blobs[n], n))
    else:
        for _, _, n, h in tqdm(wanted, desc=f"read {path.name}"):
            images.append(decode(Path(h).read_bytes(), n))
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        common = max(shapes, key=[im.shape for im in images].count)
        odd = [(n, im.shape) for (_, _, n, _), im in zip(wanted, images, strict=True) if im.shape != common]
        listed = ", ".join(f"{n} {tuple(sh)}" for n, sh in odd[:5]) + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
        raise DataError(f"images in {path} differ in size or channels: most are {tuple(common)} (channels, height, "
                        f"width), but {listed}; resize them or remove them")
    return RawImages(
        np.stack(images).astype(np.uint8),
        np.asarray([names.index(c) for _, c, _, _ in wanted], dtype=np.int64),
        np.asarray([i for i, _, _, _ in wanted], dtype=np.int64),
        names,
        [n for _, _, n, _ in wanted],
    )
