import json

import h5py
import numpy as np
import pytest

from diffattr.io import ArtefactError, atomic_path, read_h5, write_h5


def test_roundtrip_with_provenance(tmp_path):
    p = write_h5(
        tmp_path / "a.h5",
        {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "names": np.asarray(["a", "bb"])},
        config={"data": {"seed": 3}},
        attrs={"n": 2, "args": {"k": 1}},
    )
    art = read_h5(p, expect={"x": (2, None), "names": (2,)})
    np.testing.assert_array_equal(art["x"], np.arange(6).reshape(2, 3))
    assert list(art["names"]) == ["a", "bb"]
    assert art.config == {"data": {"seed": 3}}
    assert art.attrs["n"] == 2 and json.loads(art.attrs["args"]) == {"k": 1}
    assert art.attrs["diffattr_version"] and art.attrs["git_commit"] and art.attrs["schema_version"] == 1


def test_shape_and_dataset_checks(tmp_path):
    p = write_h5(tmp_path / "a.h5", {"x": np.zeros((2, 3))})
    with pytest.raises(ArtefactError, match=r"shape \(2, 3\), expected \(2, 4\)"):
        read_h5(p, expect={"x": (2, 4)})
    with pytest.raises(ArtefactError, match="no dataset 'y'"):
        read_h5(p, expect={"y": (1,)})
    with pytest.raises(ArtefactError, match="not found"):
        read_h5(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(ArtefactError, match="provenance"):
        read_h5(tmp_path / "foreign.h5")


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.h5"

    class DiesMidway(dict):
        def items(self):
            yield "first", np.zeros(3)
            raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        write_h5(target, DiesMidway())
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
