"""Data sources against real files: a CIFAR python tarball built here and served via file://, image folders."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffattr.data import (
    DataError,
    fetch,
    load_cifar10_python,
    load_digits,
    load_image_folder,
    resize,
    select,
)
from diffattr.data.sources import RawImages, sha256_of
from tests.conftest import SHARED_DATASETS

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar_tarball(path: Path, per_batch: int = 6, seed: int = 0, drop: str | None = None) -> tuple[Path, np.ndarray, np.ndarray]:
    """A miniature cifar-10-python.tar.gz with the official layout; returns path, images, labels."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, obj: dict) -> None:
            if name == drop:
                return
            raw = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))

        add("batches.meta", {b"label_names": [n.encode() for n in CIFAR_NAMES]})
        for b in range(1, 6):
            data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
            lab = rng.integers(0, 10, size=per_batch).tolist()
            add(f"data_batch_{b}", {b"data": data, b"labels": lab})
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(np.asarray(lab))
    return path, np.concatenate(images), np.concatenate(labels)


def test_digits():
    raw = load_digits(["1", "7"])
    assert raw.images.dtype == np.uint8 and raw.images.shape[1:] == (1, 8, 8)
    assert raw.images.max() == 255 and set(np.unique(raw.labels)) == {1, 7}
    assert len(raw.images) == 182 + 179  # sklearn's counts of 1s and 7s
    with pytest.raises(DataError, match=r"unknown class name\(s\) \['x'\]"):
        load_digits(["1", "x"])


def test_cifar_python_tarball_via_file_url(tmp_path):
    tarball, images, labels = make_cifar_tarball(tmp_path / "cifar-10-python.tar.gz")
    url, sha = tarball.as_uri(), sha256_of(tarball)
    cache = tmp_path / "cache"
    raw = load_cifar10_python(url, sha, cache)
    np.testing.assert_array_equal(raw.images, images)
    np.testing.assert_array_equal(raw.labels, labels)
    np.testing.assert_array_equal(raw.source_index, np.arange(30))
    assert raw.class_names == CIFAR_NAMES
    assert (cache / "cifar-10-python.tar.gz").is_file()
    # cached: works after the source is gone
    tarball.unlink()
    two = load_cifar10_python(url, sha, cache, classes=["automobile", "horse"])
    np.testing.assert_array_equal(two.source_index, np.flatnonzero(np.isin(labels, [1, 7])))


def test_checksum_mismatch_shows_both_and_caches_nothing(tmp_path):
    tarball, _, _ = make_cifar_tarball(tmp_path / "cifar-10-python.tar.gz")
    wrong = "0" * 64
    with pytest.raises(DataError) as exc:
        fetch(tarball.as_uri(), wrong, tmp_path / "cache")
    assert wrong in str(exc.value) and sha256_of(tarball) in str(exc.value)
    assert not any((tmp_path / "cache").iterdir())


def test_corrupt_tarball(tmp_path):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"this is not a tarball")
    with pytest.raises(DataError, match="not a readable tar archive"):
        load_cifar10_python(bad.as_uri(), sha256_of(bad), tmp_path / "cache")


def test_wrong_layout_and_missing_url(tmp_path):
    tarball, _, _ = make_cifar_tarball(tmp_path / "cifar-10-python.tar.gz", drop="data_batch_3")
    with pytest.raises(DataError, match="missing.*data_batch_3"):
        load_cifar10_python(tarball.as_uri(), sha256_of(tarball), tmp_path / "cache")
    with pytest.raises(DataError, match="cannot download"):
        fetch((tmp_path / "nope.tar.gz").as_uri(), "0" * 64, tmp_path / "cache2")


def write_image_folder(root: Path, classes: dict[str, int], size=(8, 8), mode="RGB", fmt="PNG") -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(1)
    out = {}
    for c, n in classes.items():
        (root / c).mkdir(parents=True)
        out[c] = []
        for i in range(n):
            arr = rng.integers(0, 256, size=(*size, 3) if mode == "RGB" else size, dtype=np.uint8)
            Image.fromarray(arr, mode).save(root / c / f"{i:04d}.png", fmt)
            out[c].append(arr)
    return out


def test_image_folder_directory_and_tarball(tmp_path):
    truth = write_image_folder(tmp_path / "ds" / "train", {"cat": 3, "ant": 2})
    (tmp_path / "ds" / "README.txt").write_text("not an image")
    raw = load_image_folder(tmp_path / "ds", split="train")
    assert raw.class_names == ["ant", "cat"]  # sorted sub-folders
    assert raw.images.shape == (5, 3, 8, 8)
    np.testing.assert_array_equal(raw.images[0], truth["ant"][0].transpose(2, 0, 1))  # PNG is lossless
    np.testing.assert_array_equal(raw.source_index, np.arange(5))
    tar = tmp_path / "ds.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(tmp_path / "ds", arcname="mirror")
    raw_t = load_image_folder(tar, split="train", classes=["cat"])
    np.testing.assert_array_equal(raw_t.images, raw.images[raw.labels == 1])
    np.testing.assert_array_equal(raw_t.source_index, [2, 3, 4])


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_image_folder(tmp_path / "missing")
    write_image_folder(tmp_path / "flat", {"a": 2})
    with pytest.raises(DataError, match="no images in the layout train/<class>/<image>"):
        load_image_folder(tmp_path / "flat", split="train")
    with pytest.raises(DataError, match="unknown class"):
        load_image_folder(tmp_path / "flat", split=None, classes=["b"])
    (tmp_path / "flat" / "a" / "9999.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="unreadable image a/9999.png"):
        load_image_folder(tmp_path / "flat", split=None)


@pytest.mark.parametrize("as_tar", [False, True])
def test_empty_class_folder_and_odd_sizes_are_named(tmp_path, as_tar):
    import tarfile

    root = tmp_path / "ds"
    write_image_folder(root / "train", {"cat": 3, "dog": 2})
    (root / "train" / "emu").mkdir()  # a class folder without images
    src = root
    if as_tar:
        src = tmp_path / "ds.tar.gz"
        with tarfile.open(src, "w:gz") as tar:
            tar.add(root, arcname="ds")
    with pytest.raises(DataError, match=r"class folder\(s\) \['emu'\] in .* hold no images"):
        load_image_folder(src, split="train")  # every class, emu included (it used to be dropped silently)
    with pytest.raises(DataError, match=r"\['emu'\] .* hold no images"):
        load_image_folder(src, split="train", classes=["cat", "emu"])  # used to say "unknown class"
    assert load_image_folder(src, split="train", classes=["cat", "dog"]).images.shape[0] == 5

    odd = tmp_path / "odd"
    write_image_folder(odd / "train", {"cat": 3})
    write_image_folder(odd / "train", {"dog": 1}, size=(9, 8))
    with pytest.raises(DataError, match=r"most are \(3, 8, 8\).*but train/dog/\S+ \(3, 9, 8\)"):
        load_image_folder(odd)


def test_select_balances_and_is_deterministic():
    raw = load_digits()
    a = select(raw, ["1", "7"], 50, seed=0)
    b = select(raw, ["1", "7"], 50, seed=0)
    c = select(raw, ["1", "7"], 50, seed=1)
    assert np.bincount(a.labels).tolist() == [50, 50] and a.class_names == ["1", "7"]
    np.testing.assert_array_equal(a.source_index, b.source_index)
    assert not np.array_equal(a.source_index, c.source_index)
    assert len(np.unique(a.source_index)) == 100  # without replacement
    with pytest.raises(DataError, match="class '1' has 182 images, fewer than data.per_class=500"):
        select(raw, ["1"], 500, seed=0)


CIFAR_JPEG = SHARED_DATASETS / "cifar10-jpeg.tar.gz"


@pytest.mark.skipif(not CIFAR_JPEG.exists(), reason=f"{CIFAR_JPEG} not present")
def test_cifar2_from_shared_jpeg_tarball():
    raw = load_image_folder(CIFAR_JPEG, split="train", classes=["automobile", "horse"])
    assert raw.class_names == CIFAR_NAMES
    assert raw.images.shape == (10000, 3, 32, 32)
    ds = select(raw, ["automobile", "horse"], 2500, seed=0)
    assert ds.images.shape == (5000, 3, 32, 32)
    assert np.bincount(ds.labels).tolist() == [2500, 2500]
    assert len(np.unique(ds.source_index)) == 5000


def test_resize_averages_blocks_and_keeps_labels():
    images = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    raw = RawImages(images, np.array([0, 1]), np.array([5, 9]), ["a", "b"])
    small = resize(raw, 2)
    assert small.images.shape == (2, 3, 2, 2) and small.images.dtype == np.uint8
    block = images[1, 2, 2:4, 0:2].astype(float).mean()  # bottom-left 2x2 block of the last image's third channel
    assert small.images[1, 2, 1, 0] == np.round(block)
    np.testing.assert_array_equal(small.labels, raw.labels)
    np.testing.assert_array_equal(small.source_index, raw.source_index)
    assert resize(raw, None) is raw and resize(raw, 4) is raw
