"""CLIP cosine-similarity baseline: embeddings, score files, local weight loading and the missing-weights error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from diffattr.config import validate_config
from diffattr.queries import queries
from diffattr.scores import read_scores
from diffattr.scores.base import ImageInputs, write_score_files
from diffattr.scores.clip import (
    clip_similarity,
    load_clip,
    load_open_clip,
    load_transformers_clip,
    score_clip,
)

transformers = pytest.importorskip("transformers")


def tiny_clip_model() -> torch.nn.Module:
    """A randomly initialised transformers CLIPModel (2 layers, width 32, 32x32 input)."""
    torch.manual_seed(0)
    text = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=99,
                max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32,
                  patch_size=8)
    return transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))


def test_similarities_are_cosines_of_the_image_embeddings():
    model = tiny_clip_model().eval()
    embed = load_transformers_clip(None, model=model)
    g = torch.Generator().manual_seed(1)
    samples, train = torch.rand(3, 1, 8, 8, generator=g), torch.rand(5, 1, 8, 8, generator=g)
    train[2] = samples[1]
    sim = clip_similarity(embed, samples, train, batch_size=2)
    assert sim.shape == (3, 5)
    assert sim.min() >= -1 - 1e-6 and sim.max() <= 1 + 1e-6
    torch.testing.assert_close(sim[1, 2], torch.tensor(1.0), atol=1e-5, rtol=0)
    # independently: the model's own projected features of the preprocessed images, then cosine similarity
    with torch.no_grad():
        def feats(x):
            out = model.get_image_features(pixel_values=embed.preprocess(x))
            return out if torch.is_tensor(out) else out.pooler_output
        direct = torch.nn.functional.cosine_similarity(feats(samples)[:, None], feats(train)[None], dim=-1)
    torch.testing.assert_close(sim, direct, atol=1e-5, rtol=1e-5)


def test_transformers_weights_load_from_a_local_directory(tmp_path: Path):
    model = tiny_clip_model().eval()
    model.save_pretrained(tmp_path / "clip")
    loaded = load_clip({"backend": "transformers", "model": "ViT-B-32", "weights": str(tmp_path / "clip")})
    x = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(loaded(x), load_transformers_clip(None, model=model)(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["transformers", "open_clip"])
@pytest.mark.parametrize("weights", [None, "no/such/clip-weights"])
def test_missing_weights_name_the_key_the_path_and_how_to_get_them(backend, weights):
    with pytest.raises(FileNotFoundError) as err:
        load_clip({"backend": backend, "model": "ViT-B-32", "weights": weights})
    msg = str(err.value)
    assert "clip.weights" in msg and backend in msg and "internet" in msg
    if weights:
        assert weights in msg


def _write_inputs(tmp_path: Path, n: int, s: int) -> tuple[Path, Path]:
    from diffattr.io import write_h5

    rng = np.random.default_rng(0)
    train = write_h5(tmp_path / "train.h5", {"images": rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8),
                                             "labels": np.zeros(n, np.int64), "source_index": np.arange(n)})
    imgs = rng.integers(0, 256, (s, 1, 8, 8), dtype=np.uint8)
    samples = write_h5(tmp_path / "samples.h5", {"images": imgs, "samples": imgs.astype(np.float32) / 127.5 - 1})
    return train, samples


def test_score_files_have_the_common_format(tmp_path: Path):
    cfg = validate_config({"experiment": "t", "influence": {"measurements": ["loss", "elbo"]},
                           "evaluate": {"methods": ["clip"]}})
    train, samples = _write_inputs(tmp_path, n=7, s=3)
    files, _ = score_clip({"clip": cfg["clip"]}, ImageInputs.load(train, samples), queries(["loss", "elbo"], []),
                          progress=False, embedder=load_transformers_clip(None, model=tiny_clip_model()))
    write_score_files(files, [tmp_path / "scores/clip" / f"{m}.h5" for m in ("loss", "elbo")], {})
    loss, elbo = (read_scores(tmp_path / "scores/clip" / f"{m}.h5") for m in ("loss", "elbo"))
    assert loss["scores"].shape == (1, 3, 7) and loss["scores"].dtype == np.float32
    assert np.isnan(loss["dampings"]).all() and loss.attrs["method"] == "clip"
    assert np.abs(loss["scores"]).max() <= 1 + 1e-6
    np.testing.assert_array_equal(loss["scores"], elbo["scores"])


def test_open_clip_random_init_and_local_checkpoint(tmp_path: Path):
    """Needs open_clip (and so a torchvision that works beside torch): runs where it imports, e.g. a CUDA build."""
    open_clip = pytest.importorskip("open_clip")
    embed = load_open_clip("ViT-B-32", None, random_init=True)
    x = torch.rand(2, 3, 32, 32)
    sim = clip_similarity(embed, x, torch.cat([x, torch.rand(3, 3, 32, 32)]))
    assert sim.shape == (2, 5) and abs(float(sim[0, 0]) - 1) < 1e-5
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    torch.save(model.state_dict(), tmp_path / "ckpt.bin")
    loaded = load_open_clip("ViT-B-32", tmp_path / "ckpt.bin")
    with torch.no_grad():
        direct = torch.nn.functional.normalize(model.eval().encode_image(loaded.preprocess(x)), dim=1)
    torch.testing.assert_close(loaded(x), direct, atol=1e-5, rtol=1e-5)
    shutil.rmtree(tmp_path)
