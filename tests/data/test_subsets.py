import numpy as np
import pytest

from diffattr.config import validate_config
from diffattr.data import DataError, draw_subsets, read_subsets, read_train
from diffattr.stages.data import make_subsets, prepare_dataset
from tests.conftest import paths


def test_subset_size_and_determinism():
    masks, seeds = draw_subsets(101, 7, 0.5, 3, seed=0)
    assert masks.shape == (7, 101) and masks.dtype == bool
    assert (masks.sum(1) == 50).all()  # round(0.5 * 101) = 50, without replacement
    assert seeds.shape == (7, 3) and len(np.unique(seeds)) == 21
    again, seeds2 = draw_subsets(101, 7, 0.5, 3, seed=0)
    np.testing.assert_array_equal(masks, again)
    np.testing.assert_array_equal(seeds, seeds2)
    other, _ = draw_subsets(101, 7, 0.5, 3, seed=1)
    assert not np.array_equal(masks, other)
    assert len({m.tobytes() for m in masks}) == 7  # distinct subsets


def test_degenerate_fraction():
    with pytest.raises(DataError, match="empty or full"):
        draw_subsets(3, 2, 0.1, 1, seed=0)


def test_artefacts_roundtrip(tmp_path):
    cfg = validate_config({"experiment": "t", "data": {"classes": ["1", "7"], "per_class": 30}, "subsets": {"n_subsets": 4}})
    prepare_dataset(paths(), paths(train=tmp_path / "train.h5"), data=cfg["data"])
    train = read_train(tmp_path / "train.h5")
    assert train["images"].shape == (60, 1, 8, 8) and train["images"].dtype == np.uint8
    assert list(train["class_names"]) == ["1", "7"]
    assert train.config["data"]["per_class"] == 30
    make_subsets(paths(train=tmp_path / "train.h5"), paths(subsets=tmp_path / "subsets.h5"), subsets=cfg["subsets"])
    sub = read_subsets(tmp_path / "subsets.h5")
    assert sub["masks"].shape == (4, 60) and (sub["masks"].sum(1) == 30).all()
    assert sub["seeds"].shape == (4, 2)
