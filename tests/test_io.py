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


def test_truncated_and_modified_artefacts_are_named_with_the_fix(tmp_path):
    path = tmp_path / "results/x/scores/kfac_mc_expand/loss.h5"
    marker = np.arange(4096, dtype=np.float64) + 0.5
    write_h5(path, {"scores": marker, "dampings": np.ones(2)})
    raw = path.read_bytes()
    # a few bytes flipped inside the data: the file still opens, the checksum catches it
    at = raw.index(marker[100:102].tobytes())
    path.write_bytes(raw[:at] + bytes(b ^ 0xFF for b in raw[at : at + 8]) + raw[at + 8 :])
    with pytest.raises(ArtefactError, match=r"dataset 'scores' does not match its checksum.*delete .*loss.h5 and "
                                            r"rerun \(or `snakemake --forcerun gather_kfac_scores`\)"):
        read_h5(path)
    read_h5(path, names=["dampings"])  # an intact dataset of the same file still reads
    path.write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(ArtefactError, match=r"loss.h5 is not a readable HDF5 file \(truncated or corrupt"):
        read_h5(path)
    # an artefact written before checksums existed is read (unverified)
    old = write_h5(tmp_path / "old.h5", {"a": np.ones(3)})
    with h5py.File(old, "a") as f:
        del f.attrs["content_sha256"]
    assert read_h5(old)["a"].sum() == 3


def test_corrupt_json_and_model_directories_are_named(tmp_path):
    from diffattr.io import read_json
    from diffattr.models import build_unet, load_model, save_model

    lds = tmp_path / "results/x/metrics/lds.json"
    lds.parent.mkdir(parents=True)
    lds.write_text('{"results": [')
    with pytest.raises(ArtefactError, match=r"lds.json is not valid JSON.*--forcerun compute_lds"):
        read_json(lds)
    model = tmp_path / "results/x/models/full"
    save_model(build_unet("unet_tiny"), model)
    weights = model / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ArtefactError, match=r"the model in .*models/full is unreadable.*--forcerun train_model"):
        load_model(model)
