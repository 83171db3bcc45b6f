"""``diffattr attribute`` from scratch (a tiny diffusers model and an image folder, no study): its scores equal the
pipeline's, its cache saves the training side, and bad input gets a clear error."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from diffattr.config import validate_config
from diffattr.data.space import to_model_space
from diffattr.io import write_h5
from diffattr.models import build_unet, save_model
from diffattr.scores import read_scores
from diffattr.scores.registry import attribution_sections
from diffattr.stages.attribute import AttributionError, attribute
from tests.conftest import paths

CONFIG = validate_config({"experiment": "t", "influence": {
    "curvature_mc_samples": 2, "gradient_mc_samples": 2, "batch_size": 4, "dampings": [1e-8, 1e-2],
    "default_damping": 1e-2, "query_compression": "int8"}})
SECTIONS = attribution_sections(CONFIG, "kfac_mc_expand")


def _model(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_model(build_unet("unet_tiny", in_channels=1, sample_size=8), path)
    DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02).save_config(str(path))
    return path


def _png(path: Path, rng: np.random.Generator, size: int = 8) -> np.ndarray:
    pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture
def setup(tmp_path: Path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(6):
            _png(tmp_path / f"imgs/train/{c}/{i}.png", rng)
    queries = [tmp_path / "q0.png", tmp_path / "q1.png", tmp_path / "q2.png"]
    for q in queries:
        _png(q, rng)
    return _model(tmp_path / "model"), tmp_path / "imgs/train", queries


def _csv_scores(out: Path) -> dict[str, np.ndarray]:
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_query: dict[str, dict[int, float]] = {}
    for r in rows:
        by_query.setdefault(r["query"], {})[int(r["train_index"])] = float(r["score"])
    return {q: np.array([v[j] for j in sorted(v)]) for q, v in by_query.items()}


@pytest.mark.parametrize("query_bank", ["per_damping", "eigenbasis"])
def test_scores_equal_the_pipeline_scores(setup, tmp_path, query_bank):
    from diffattr.stages.data import prepare_dataset
    from diffattr.stages.influence import compute_kfac_scores, fit_curvature

    model, train, queries = setup
    config = validate_config({**CONFIG, "influence": {**CONFIG["influence"], "query_bank": query_bank}})
    summary = attribute(model, train, [str(q) for q in queries], tmp_path / "out",
                        attribution_sections(config, "kfac_mc_expand"), top=3, cache=tmp_path / "cache", device="cpu",
                        progress=False)
    got = _csv_scores(tmp_path / "out")

    # the pipeline on the same model, data (the folder as an image_folder source) and queries (as samples.h5)
    data = {**CONFIG["data"], "source": "image_folder", "path": str(train.parent), "split": "train"}
    prepare_dataset(paths(), paths(train=tmp_path / "p/train.h5"), data=data)
    pixels = np.stack([np.asarray(Image.open(q))[None] for q in queries])
    write_h5(tmp_path / "p/samples.h5", {"images": pixels, "samples": to_model_space(pixels).numpy()})
    files = [model / "config.json"]
    fit_curvature(paths(model=files, train=tmp_path / "p/train.h5"), paths(curvature=tmp_path / "p/c.h5"),
                  variant="kfac_mc_expand",
                  fit={k: CONFIG["influence"][k] for k in ("curvature_mc_samples", "batch_size", "seed")},
                  diffusion=CONFIG["diffusion"],
                  hflip=False, device="cpu")
    compute_kfac_scores(paths(model=files, train=tmp_path / "p/train.h5", samples=tmp_path / "p/samples.h5",
                              curvatures=[tmp_path / "p/c.h5"]),
                        paths(scores=[tmp_path / "p/scores/kfac_mc_expand/loss.h5"]), shard=0,
                        queries={"kfac_mc_expand": ["loss"]}, influence={**config["influence"], "sample_shards": 1},
                        diffusion=CONFIG["diffusion"], hflip=False, device="cpu")
    want = read_scores(tmp_path / "p/scores/kfac_mc_expand/loss.h5")["scores"][1]  # λ = 1e-2, the default
    for i, q in enumerate(queries):
        np.testing.assert_allclose(got[q.name], want[i], rtol=1e-6, atol=1e-6 * np.abs(want).max())
    assert summary["damping"] == 1e-2 and len(summary["results"]) == 3
    assert (tmp_path / "out/query_0.png").is_file() and "query_2.png" in (tmp_path / "out/index.html").read_text()
    top = summary["results"][0]["proponents"]
    assert [p["train_index"] for p in top] == list(np.argsort(-want[0], kind="stable")[:3])
    assert top[0]["file_name"].endswith(".png")


def test_second_call_reuses_the_cache_and_a_changed_model_invalidates_it(setup, tmp_path, monkeypatch):
    import diffattr.scores.base as base
    import diffattr.stages.attribute as stage

    calls = {"fit": 0, "train_gradients": 0}
    fit, grads = stage.fit_curvature, base.training_gradients

    def count(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(stage, "fit_curvature", count("fit", fit))
    monkeypatch.setattr(base, "training_gradients", count("train_gradients", grads))
    model, train, queries = setup
    run = lambda m, qs, out: attribute(m, train, [str(q) for q in qs], tmp_path / out, SECTIONS,  # noqa: E731
                                       cache=tmp_path / "cache", device="cpu", progress=False)
    run(model, queries[:1], "first")
    assert calls["fit"] == 1 and calls["train_gradients"] > 0
    calls.update(fit=0, train_gradients=0)
    second = run(model, queries, "second")
    assert calls == {"fit": 0, "train_gradients": 0}  # only query gradients and dot products
    assert second["cache_computed"] == []
    # q0 is query 0 in both calls (same draws); batching it with other queries only moves float32 rounding, which
    # the int8 query compression turns into ~1e-4 relative differences
    first, again = _csv_scores(tmp_path / "first")["q0.png"], _csv_scores(tmp_path / "second")["q0.png"]
    np.testing.assert_allclose(again, first, rtol=0, atol=1e-3 * np.abs(first).max())
    run(_model(tmp_path / "other_model", seed=1), queries[:1], "third")
    assert calls["fit"] == 1 and calls["train_gradients"] > 0  # another model: another cache entry


def test_clear_errors(setup, tmp_path):
    model, train, queries = setup
    big = tmp_path / "big.png"
    _png(big, np.random.default_rng(1), size=16)
    with pytest.raises(AttributionError, match=r"big.png: image is \(1, 16, 16\).*model takes \(1, 8, 8\).*--resize"):
        attribute(model, train, [str(big)], tmp_path / "o", SECTIONS, device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AttributionError, match="--train .*empty"):
        attribute(model, tmp_path / "empty", [str(queries[0])], tmp_path / "o", SECTIONS, device="cpu")
    (tmp_path / "nomodel").mkdir()
    with pytest.raises(AttributionError, match="--model .*nomodel.*config.json"):
        attribute(tmp_path / "nomodel", train, [str(queries[0])], tmp_path / "o", SECTIONS, device="cpu")
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    with pytest.raises(AttributionError, match="bad.png: unreadable image"):
        attribute(model, train, [str(bad)], tmp_path / "o", SECTIONS, device="cpu")
    with pytest.raises(AttributionError, match="--method nope"):
        attribute(model, train, [str(queries[0])], tmp_path / "o", SECTIONS, method="nope", device="cpu")


def test_resize_and_a_cache_from_another_version(setup, tmp_path):
    from diffattr.io import ArtefactError

    model, train, queries = setup
    big = tmp_path / "big.png"
    _png(big, np.random.default_rng(1), size=16)
    summary = attribute(model, train, [str(big)], tmp_path / "o", SECTIONS, resize=True, cache=tmp_path / "c",
                        device="cpu", progress=False)
    meta = Path(summary["cache"]) / "cache.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "diffattr_version": "0.0.1"}))
    with pytest.raises(ArtefactError, match="written by diffattr 0.0.1.*delete"):
        attribute(model, train, [str(big)], tmp_path / "o", SECTIONS, resize=True, cache=tmp_path / "c", device="cpu")


def test_command_line(setup, tmp_path, capsys):
    from diffattr.cli import main

    model, train, queries = setup
    rc = main(["attribute", "--model", str(model), "--train", str(train), "--query", str(queries[0]), "--top", "2",
               "--out", str(tmp_path / "cli"), "--no-cache", "--device", "cpu", "--method", "graddot"])
    assert rc == 0 and (tmp_path / "cli/index.html").is_file()
    summary = json.loads((tmp_path / "cli/attribution.json").read_text())
    assert summary["method"] == "graddot" and len(summary["results"][0]["proponents"]) == 2
    assert main(["attribute", "--model", str(model), "--query", str(queries[0])]) == 2
    assert "give --study DIR, or both --model DIR and --train PATH" in capsys.readouterr().err
