"""``diffattr attribute``: which training images made *this* image, for any DDPM and any image.

:func:`attribute` is the engine behind the command line (:mod:`diffattr.cli`) and the rule ``attribute_queries``
(:func:`attribute_queries`). It scores each query with one registered method through the same scorers as the
pipeline (so its scores equal the pipeline's for the same model, data, seeds and method) and keeps the training
side in a cache keyed by (model weights, training set, method arguments): a second call with new queries computes
only the query gradients and the dot products. Scores are shown oriented like the loss: a *proponent* is a training
image whose removal is predicted to raise the query's loss (to make it less likely), an *opponent* the reverse.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffattr import __version__
from diffattr.config import ConfigError, load_config
from diffattr.curvature import FlatEps, Variant, fit_curvature, load_curvature, save_curvature
from diffattr.data import DataError, load_image_folder, read_train
from diffattr.data.space import to_model_space
from diffattr.diffusion import Schedule
from diffattr.io import ArtefactError, atomic_path, git_commit
from diffattr.measure import relative_sign
from diffattr.models import load_model
from diffattr.models.unet import diffusion_settings
from diffattr.plots.attribution import attribution_panel, index_html
from diffattr.queries import parse_query
from diffattr.runtime import select_device
from diffattr.sampling import read_samples
from diffattr.scores.base import GradientArgs, GradientInputs, ImageInputs
from diffattr.scores.cache import DirCache, NoCache
from diffattr.scores.influence import score_kfac
from diffattr.scores.io import damping_index
from diffattr.scores.registry import METHODS, is_kfac
from diffattr.stages import Paths, model_dir

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cache layout changes


class AttributionError(ValueError):
    """Bad input to ``diffattr attribute``; the message names the file or value and what is wrong."""


@dataclass
class Images:
    """uint8 images ``[N, C, H, W]`` with a name each (file name, or ``train.h5[i]``)."""

    pixels: np.ndarray
    names: list[str]
    model_space: torch.Tensor | None = None  # exact model-space values where known (samples.h5), else from pixels
    draw_indices: list[int] | None = None  # Monte-Carlo draw set of each query (a sample's index in samples.h5)

    def tensor(self) -> torch.Tensor:
        return self.model_space if self.model_space is not None else to_model_space(self.pixels)


def load_training_set(path: str | Path) -> Images:
    """Training images from ``train.h5`` or an image folder / tarball (``<class>/<image>`` or flat)."""
    path = Path(path)
    if path.suffix == ".h5":
        art = read_train(path)
        return Images(art["images"], [f"{path.name}[{i}]" for i in range(art["images"].shape[0])])
    if not path.exists():
        raise AttributionError(f"--train {path}: no such file or folder")
    try:
        raw = load_image_folder(path, split=None)
    except DataError as exc:
        raise AttributionError(f"--train {path}: {exc}") from exc
    return Images(raw.images, list(raw.file_names or []))


def _read_image(path: Path, shape: tuple[int, int, int], resize: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    try:
        with Image.open(path) as im:
            im.load()
            if resize:
                im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.Resampling.BICUBIC)
            arr = np.asarray(im.convert("L" if im.mode in {"1", "L", "I", "I;16", "F"} else "RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise AttributionError(f"--query {path}: unreadable image ({exc})") from exc
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if arr.shape != shape:
        raise AttributionError(f"--query {path}: image is {arr.shape} (channels, height, width) but the model takes "
                               f"{shape}; pass --resize to convert it")
    return arr.astype(np.uint8)


def load_queries(specs: Sequence[str], shape: tuple[int, int, int], resize: bool = False) -> Images:
    """Query images: PNG/JPEG files, or ``samples.h5`` (all samples) / ``samples.h5:0,3`` (some)."""
    pixels, names, exact, draws = [], [], [], []
    for spec in specs:
        file, _, which = spec.partition(":") if ".h5" in spec else (spec, "", "")
        path = Path(file)
        if path.suffix == ".h5":
            art = read_samples(path)
            idx = [int(i) for i in which.split(",")] if which else list(range(art["images"].shape[0]))
            bad = [i for i in idx if not 0 <= i < art["images"].shape[0]]
            if bad:
                raise AttributionError(f"--query {spec}: {path} has {art['images'].shape[0]} samples, no index {bad}")
            if tuple(art["images"].shape[1:]) != shape:
                raise AttributionError(f"--query {spec}: samples are {tuple(art['images'].shape[1:])} but the model "
                                       f"takes {shape}")
            pixels += [art["images"][i] for i in idx]
            exact += [torch.from_numpy(art["samples"][i]) for i in idx]
            names += [f"{path.name}:{i}" for i in idx]
            draws += idx  # the draws the pipeline used for this sample
        elif path.is_file():
            pixels.append(_read_image(path, shape, resize))
            exact.append(to_model_space(pixels[-1][None])[0])
            names.append(path.name)
            draws.append(len(pixels) - 1)  # an image file: its position
        else:
            raise AttributionError(f"--query {spec}: no such file")
    if not pixels:
        raise AttributionError("no queries given")
    return Images(np.stack(pixels), names, torch.stack(exact), draws)


def _sha256(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def model_hash(directory: Path) -> str:
    """SHA-256 of a saved model's config and weights files."""
    files = sorted(p for p in directory.iterdir() if p.suffix in {".json", ".safetensors", ".bin"}
                   and p.name != "train_info.json")
    return _sha256(*(p.name.encode() + p.read_bytes() for p in files))


def find_study_config(study: Path) -> Path:
    """The config a study was run with: ``config.yaml`` for ``quickstart``-style names, else
    ``experiments/<name>.yaml`` (relative to the working directory)."""
    candidates = [Path("config.yaml"), Path("experiments") / f"{study.name}.yaml"]
    for c in candidates:
        if c.is_file() and load_config(c).get("experiment") == study.name:
            return c
    raise AttributionError(f"--study {study}: no config with experiment: {study.name} among "
                           f"{[str(c) for c in candidates]}; pass --config FILE")


def attribute(
    model: str | Path,
    train: str | Path,
    queries: Sequence[str],
    out: str | Path,
    sections: Mapping[str, Any],
    method: str = "kfac_mc_expand",
    measurement: str = "loss",
    damping: float | None = None,
    top: int = 8,
    resize: bool = False,
    device: str = "auto",
    cache: str | Path | None = None,
    cache_dtype: str = "float32",
    curvature_file: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Attribute each query to the training set and write ``out/``: ``query_<i>.png`` (the query, its top
    proponents and opponents), ``scores.csv`` (every training image ranked, per query), ``attribution.json``
    (arguments, provenance, timings, the top lists) and ``index.html``.

    Args:
        model: A diffusers ``UNet2DModel`` directory (``save_pretrained``), with a noise schedule beside it.
        train: The training set: ``train.h5``, an image folder or a tarball.
        queries: See :func:`load_queries`.
        out: Output folder.
        sections: The config values of the method (:func:`~diffattr.scores.registry.attribution_sections`).
        method: A K-FAC variant or a registered method.
        measurement: What to attribute: ``loss``, ``elbo`` or ``timestep_loss_t<t>``.
        damping: λ (default: the method's default damping).
        top: Proponents and opponents shown per query.
        cache: Cache folder (None: no cache).
        cache_dtype: ``float32`` (exact) or ``int8`` training rows in the cache.
        curvature_file: A fitted curvature of this model and data to reuse (a study's).

    Returns:
        The content of ``attribution.json``.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    device = select_device(device)
    mdir, out = Path(model), Path(out)
    if not is_kfac(method) and method not in METHODS:
        raise AttributionError(f"--method {method}: not a K-FAC variant (e.g. kfac_mc_expand) or one of {sorted(METHODS)}")
    query = parse_query(measurement)
    if query.measurement not in ("loss", "elbo", "timestep_loss"):
        raise AttributionError(f"--measurement {measurement}: one of loss, elbo, timestep_loss_t<step> (the trajectory "
                               "measurement needs a sampling trajectory, which an image does not have)")
    try:
        net = load_model(mdir, device)
        diffusion = diffusion_settings(mdir)
    except (FileNotFoundError, ValueError) as exc:
        raise AttributionError(f"--model {mdir}: {exc}") from exc
    shape = (int(net.config.in_channels), int(net.config.sample_size), int(net.config.sample_size))
    data = load_training_set(train)
    if tuple(data.pixels.shape[1:]) != shape:
        raise AttributionError(f"--train {train}: images are {tuple(data.pixels.shape[1:])} but the model takes {shape}")
    asked = load_queries(queries, shape, resize)
    timings["load"] = time.perf_counter() - t0

    key = {"method": method, "sections": dict(sections), "diffusion": diffusion, "cache_dtype": cache_dtype,
           "format": CACHE_FORMAT}
    hashes = {"model": model_hash(mdir), "train": _sha256(str(data.pixels.shape).encode(), data.pixels.tobytes()),
              "method": _sha256(json.dumps(key, sort_keys=True, default=str).encode())}
    root = None if cache is None else Path(cache) / f"{hashes['model'][:16]}-{hashes['train'][:16]}" / \
        f"{method}-{hashes['method'][:12]}"
    store: Any = NoCache() if root is None else _open_cache(root, key, cache_dtype)

    t0 = time.perf_counter()
    if is_kfac(method):
        args = GradientArgs.from_sections(sections["influence"], sections["train.hflip"])
        inputs = GradientInputs(FlatEps(net).eval(), Schedule.from_config(diffusion), data.tensor().to(device),
                                asked.tensor().to(device), None, asked.draw_indices)
        curv = _curvature(method, inputs, sections, args, root, curvature_file, progress)
        # precondition with the config's whole damping grid (plus an off-grid --damping), as the pipeline does, so
        # each row is exactly the pipeline's (int8 rounding depends on the batch of dampings computed together)
        icfg = sections["influence"]
        lams = list(icfg["dampings"])
        if damping is not None and not any(abs(d - damping) <= 1e-9 * damping for d in lams):
            lams.append(float(damping))
        timings["curvature"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        (result,), score_timings = score_kfac([curv], inputs, [query], args, lams, icfg["default_damping"], progress,
                                              store, icfg["query_bank"])
    else:
        info = METHODS[method]
        if info.needs_model:
            inputs = GradientInputs(FlatEps(net).eval(), Schedule.from_config(diffusion), data.tensor().to(device),
                                    asked.tensor().to(device), None, asked.draw_indices)
        else:
            inputs = ImageInputs(torch.from_numpy(data.pixels).float() / 255.0,
                                 torch.from_numpy(asked.pixels).float() / 255.0, device)
        (result,), score_timings = info.load()(sections, inputs, [query], progress=progress, cache=store)
    timings["scores"] = time.perf_counter() - t0
    d = damping_index(result.dampings, result.default_damping if damping is None else damping)
    sign = relative_sign(result.predicts, "loss")  # shown oriented like the loss: positive = proponent
    scores = sign * result.scores[d]  # [Q, N]

    t0 = time.perf_counter()
    summary = _write_outputs(out, asked, data, scores, top, {
        "method": method, "measurement": measurement, "damping": float(result.dampings[d]), "top": top,
        "model": str(mdir), "train": str(train), "queries": list(queries), "device": device,
        "resize": resize, "cache": None if root is None else str(root), "cache_dtype": cache_dtype,
        "curvature_file": None if curvature_file is None else str(curvature_file),
        "arguments": asdict(result.args) if hasattr(result.args, "__dataclass_fields__") else dict(result.args),
        "hashes": hashes, "diffattr_version": __version__, "git_commit": git_commit(),
        "cache_computed": list(getattr(store, "computed", [])),
    })
    timings["outputs"] = time.perf_counter() - t0
    summary["timings"] = {**timings, **{f"score_{k}": v for k, v in score_timings.items()}}
    with atomic_path(out / "attribution.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str))
    log.info("attribution of %d queries written to %s (%s)", len(asked.names), out,
             {k: round(v, 2) for k, v in summary["timings"].items()})
    return summary


def _open_cache(root: Path, key: Mapping[str, Any], dtype: str) -> DirCache:
    meta = root / "cache.json"
    if meta.is_file():
        written = json.loads(meta.read_text())
        if written.get("diffattr_version") != __version__ or written.get("format") != CACHE_FORMAT:
            raise ArtefactError(f"cache {root} was written by diffattr {written.get('diffattr_version')} (format "
                                f"{written.get('format')}); this is {__version__} (format {CACHE_FORMAT}): delete "
                                f"{root} or pass another --cache")
    else:
        root.mkdir(parents=True, exist_ok=True)
        with atomic_path(meta) as tmp:
            tmp.write_text(json.dumps({"diffattr_version": __version__, **key}, indent=2, default=str))
    return DirCache(root, dtype)


def _curvature(method, inputs, sections, args, root, curvature_file, progress):
    """The K-FAC curvature: a study's file, the cached fit, or a new fit (saved to the cache)."""
    variant = Variant.from_name(method)
    if curvature_file is not None and Path(curvature_file).is_file():
        curv = load_curvature(curvature_file)
        if curv.variant.name != method:
            raise AttributionError(f"{curvature_file} holds {curv.variant.name}, not {method}")
        return curv
    cached = None if root is None else root / "curvature.h5"
    if cached is not None and cached.is_file():
        return load_curvature(cached)
    icfg = sections["influence"]
    curv = fit_curvature(inputs.wrapper.unet, inputs.images, inputs.schedule, variant, icfg["curvature_mc_samples"],
                         icfg["batch_size"], icfg["seed"], hflip=args.hflip, device=inputs.images.device,
                         progress=progress)
    if cached is not None:
        save_curvature(curv, cached, config={"influence": dict(icfg)})
    return curv


def _write_outputs(out: Path, asked: Images, data: Images, scores: np.ndarray, top: int,
                   summary: dict[str, Any]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    pictures, table, per_query = [], [], []
    with atomic_path(out / "scores.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query", "rank", "train_index", "file_name", "score"])
        for q, name in enumerate(asked.names):
            order = np.argsort(-scores[q], kind="stable")
            w.writerows((name, r + 1, int(j), data.names[j], repr(float(scores[q, j]))) for r, j in enumerate(order))
            pro, opp = order[:top].tolist(), order[::-1][:top].tolist()
            png = f"query_{q}.png"
            attribution_panel(asked.pixels[q], data.pixels, pro, opp, scores[q], out / png,
                              title=f"{name}: {summary['method']}, {summary['measurement']}, λ={summary['damping']:.0e}")
            pictures.append(png)
            per_query.append({"query": name, "picture": png,
                              "proponents": [{"train_index": j, "file_name": data.names[j], "score": float(scores[q, j])}
                                             for j in pro],
                              "opponents": [{"train_index": j, "file_name": data.names[j], "score": float(scores[q, j])}
                                            for j in opp]})
            table += [(name, "proponent", r + 1, j, data.names[j], f"{scores[q, j]:.4g}") for r, j in enumerate(pro)]
            table += [(name, "opponent", r + 1, j, data.names[j], f"{scores[q, j]:.4g}") for r, j in enumerate(opp)]
    summary = {**summary, "results": per_query}
    shown = {k: v for k, v in summary.items() if k in ("method", "measurement", "damping", "model", "train", "top")}
    index_html(out / "index.html", "diffattr attribute", shown, pictures, table)
    return summary


def attribute_queries(
    input: Paths, output: Paths, *, request: Mapping[str, Any], sections: Mapping[str, Any], device: str
) -> None:
    """Rule ``attribute_queries``: :func:`attribute` for the config's ``attribute`` section (``request``: queries,
    method, measurement, damping, top) against the study's full model, training set and (for a K-FAC method) its
    fitted curvature, into ``attributions/``. Without queries it writes empty outputs (a page saying so), so the
    folder exists for every study (DVC tracks it)."""
    if not request["queries"]:
        out = Path(output.index).parent
        _write_outputs(out, Images(np.zeros((0, 1, 1, 1), np.uint8), []), Images(np.zeros((0, 1, 1, 1), np.uint8), []),
                       np.zeros((0, 0)), request["top"], {"method": request["method"], "queries": [],
                                                          "measurement": request["measurement"], "damping": None})
        with atomic_path(out / "attribution.json") as tmp:
            tmp.write_text(json.dumps({"queries": [], "results": [], "note": "attribute.queries is empty"}, indent=2))
        return
    attribute(model_dir(input.model), input.train, list(request["queries"]), Path(output.index).parent, sections,
              request["method"], request["measurement"], request["damping"], request["top"], device=device,
              curvature_file=getattr(input, "curvature", None))


def config_for(study: Path | None, config: str | Path | None) -> dict[str, Any]:
    """The validated config whose sections ``attribute`` uses: ``--config``, a study's own, or the defaults."""
    from diffattr.config import validate_config

    try:
        if config is not None:
            return load_config(config)
        if study is not None:
            return load_config(find_study_config(study))
        return validate_config({"experiment": "attribute"}, source="defaults")
    except ConfigError as exc:
        raise AttributionError(str(exc)) from exc
