"""CLIP cosine-similarity baseline (paper §4 "Baselines"): τ_j = cos(e(x), e(x_j)) for CLIP image embeddings e.

No model of the diffusion process enters: the score of training image x_j for generated sample x is the cosine
similarity of their CLIP image embeddings. It is written in the one score format (:mod:`diffattr.scores.io`)
with a single undamped row (damping NaN), once per configured influence measurement so that evaluation treats
every method alike.

Two loaders, both real: ``open_clip`` (``open_clip.create_model`` with a local checkpoint file) and
``transformers`` (``CLIPModel.from_pretrained`` on a local directory). open_clip imports torchvision at import
time, and PyPI's torchvision cannot sit beside a CPU-only torch build (see README); the transformers loader has no
such need. Images are preprocessed as CLIP's own transform does for square inputs (bicubic resize to the model's
input size, then the model's mean/std normalisation), on tensors.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffattr.queries import Query
from diffattr.scores.base import ImageInputs, ScoreFile
from diffattr.scores.cache import NoCache

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
BACKENDS = ("open_clip", "transformers")
HOW_TO_GET = {
    "open_clip": ("download e.g. https://huggingface.co/timm/vit_base_patch32_clip_224.openai/resolve/main/"
                  "open_clip_pytorch_model.bin on a machine with internet access and set clip.weights to that file"),
    "transformers": ("on a machine with internet access run `python -c \"from transformers import CLIPModel; "
                     "CLIPModel.from_pretrained('openai/clip-vit-base-patch32').save_pretrained('DIR')\"` (and copy "
                     "DIR here) and set clip.weights to DIR"),
}


class ClipEmbedder:
    """Unit-norm CLIP image embeddings of images in [0, 1].

    Args:
        encode: Maps normalised pixels ``[B, 3, S, S]`` to embeddings ``[B, D]``.
        image_size: The model's input side S.
        mean, std: Per-channel normalisation of the model.
        device: Torch device.
    """

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], image_size: int,
                 mean: tuple[float, ...], std: tuple[float, ...], device: str | torch.device = "cpu") -> None:
        self.encode, self.image_size, self.device = encode, int(image_size), torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` in [0, 1] (C = 1 is repeated to RGB) → normalised ``[B, 3, S, S]``."""
        x = images.to(self.device, torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[1] != 3:
            raise ValueError(f"CLIP needs 1 or 3 channels, got images of shape {tuple(images.shape)}")
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                          antialias=True).clamp(0, 1)
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        """Embeddings ``[B, D]`` of unit norm (float32, on the CPU)."""
        out = []
        for start in tqdm(range(0, images.shape[0], batch_size), desc="clip embed", disable=not progress,
                          mininterval=2):
            e = self.encode(self.preprocess(images[start : start + batch_size])).float()
            out.append(F.normalize(e, dim=1).cpu())
        return torch.cat(out)


def _missing_weights(backend: str, weights: Any) -> FileNotFoundError:
    kind = "a checkpoint file" if backend == "open_clip" else "a save_pretrained directory (with config.json)"
    where = "clip.weights is not set" if weights is None else f"clip.weights = {weights} is not {kind}"
    return FileNotFoundError(f"CLIP weights for backend {backend!r} not found: {where}. This machine cannot download "
                             f"them at run time; {HOW_TO_GET[backend]}.")


def load_open_clip(model_name: str, weights: str | Path | None, device: str | torch.device = "cpu",
                   random_init: bool = False) -> ClipEmbedder:
    """An open_clip model ``model_name`` (e.g. ``ViT-B-32``) with weights from the local file ``weights``.

    ``random_init`` builds it untrained (tests); otherwise a missing file raises :class:`FileNotFoundError`.
    """
    if not random_init and (weights is None or not Path(weights).is_file()):
        raise _missing_weights("open_clip", weights)
    import open_clip  # imports torchvision: only here

    model = open_clip.create_model(model_name, pretrained=None if random_init else str(weights), device=device).eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    mean = getattr(model.visual, "image_mean", None) or OPENAI_MEAN
    std = getattr(model.visual, "image_std", None) or OPENAI_STD
    return ClipEmbedder(model.encode_image, size, tuple(mean), tuple(std), device)


def load_transformers_clip(weights: str | Path | None, device: str | torch.device = "cpu",
                           model: Any = None) -> ClipEmbedder:
    """A ``transformers`` CLIPModel saved with ``save_pretrained`` in the local directory ``weights``.

    ``model`` passes an already built CLIPModel instead (tests: a randomly initialised one).
    """
    import json

    if model is None:
        if weights is None or not (Path(weights) / "config.json").is_file():
            raise _missing_weights("transformers", weights)
        from transformers import CLIPModel

        model = CLIPModel.from_pretrained(str(weights))
    model = model.to(device).eval()
    mean, std = OPENAI_MEAN, OPENAI_STD
    proc = Path(weights) / "preprocessor_config.json" if weights is not None else None
    if proc is not None and proc.is_file():
        cfg = json.loads(proc.read_text())
        mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        feats = model.get_image_features(pixel_values=pixels)
        return feats if torch.is_tensor(feats) else feats.pooler_output  # transformers 5 returns a model output

    return ClipEmbedder(encode, model.config.vision_config.image_size, mean, std, device)


def load_clip(ccfg: Mapping[str, Any], device: str | torch.device = "cpu") -> ClipEmbedder:
    """The embedder the ``clip`` config section names (backend, model, weights)."""
    if ccfg["backend"] == "open_clip":
        return load_open_clip(ccfg["model"], ccfg["weights"], device)
    if ccfg["backend"] == "transformers":
        return load_transformers_clip(ccfg["weights"], device)
    raise ValueError(f"clip.backend must be one of {BACKENDS}, got {ccfg['backend']!r}")


def clip_similarity(embed: ClipEmbedder, samples: torch.Tensor, train_images: torch.Tensor,
                    batch_size: int = 128, progress: bool = False) -> torch.Tensor:
    """Cosine similarities ``[S, N]`` between generated samples ``[S, C, H, W]`` and training images
    ``[N, C, H, W]``, both in [0, 1]."""
    return embed(samples, batch_size) @ embed(train_images, batch_size, progress).T


@dataclass
class ClipArgs:
    """CLIP arguments (the ``clip`` section)."""

    backend: str
    model: str
    weights: str | None
    batch_size: int


def score_clip(sections: Mapping[str, Any], inputs: ImageInputs, queries: Sequence[Query], progress: bool = True,
               embedder: ClipEmbedder | None = None, cache: Any = None) -> tuple[list[ScoreFile], dict[str, float]]:
    """Cosine similarities ``[1, S, N]`` (damping NaN), the same for every query (section: ``clip``).

    ``embedder`` overrides the configured model (tests).
    """
    ccfg = sections["clip"]
    args = ClipArgs(ccfg["backend"], ccfg["model"], None if ccfg["weights"] is None else str(ccfg["weights"]),
                    int(ccfg["batch_size"]))
    t0 = time.perf_counter()
    embed = embedder if embedder is not None else load_clip(ccfg, inputs.device)
    timings = {"load": time.perf_counter() - t0}
    t0 = time.perf_counter()
    train = (cache or NoCache()).matrix("clip_embeddings", lambda: embed(inputs.images, args.batch_size, progress))
    sim = (embed(inputs.samples, args.batch_size) @ train.T).numpy()
    timings["embed_and_score"] = time.perf_counter() - t0
    log.info("clip timings: %s", {k: round(v, 2) for k, v in timings.items()})
    return [ScoreFile("clip", q.name, sim[None], [math.nan], None, "similarity", args) for q in queries], timings
