"""The ``diffattr`` command line: ``diffattr attribute`` (which training images made this image?).

    diffattr attribute --study results/quickstart --query examples/digit_7.png --top 8
    diffattr attribute --model my_unet/ --train my_images/ --query a.png b.png --method trak --out attr/
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from diffattr.scores.registry import METHODS


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diffattr"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="diffattr", description="Training-data attribution for diffusion models.")
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("attribute", help="which training images made these images?",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = a.add_argument_group("model and data (--study, or --model and --train)")
    where.add_argument("--study", type=Path, help="a finished study, e.g. results/quickstart: its full model, training "
                       "set, config and fitted curvature")
    where.add_argument("--model", type=Path, help="a diffusers UNet2DModel directory (save_pretrained) with a "
                       "scheduler_config.json beside it (or diffattr's train_info.json)")
    where.add_argument("--train", type=Path, help="the training set: an image folder or tarball (<class>/<image> or "
                       "flat), or a diffattr train.h5")
    a.add_argument("--query", nargs="+", required=True,
                   help="PNG/JPEG files, or <file>.h5[:i,j,...]; with --study a bare samples.h5:i is the study's")
    a.add_argument("--method", default="kfac_mc_expand",
                   help=f"a K-FAC variant (kfac|ekfac_mc|empirical_expand|reduce) or one of {', '.join(METHODS)}")
    a.add_argument("--measurement", default="loss", help="loss, elbo or timestep_loss_t<step> (default: loss)")
    a.add_argument("--damping", type=float, help="λ (default: the method's default damping from the config)")
    a.add_argument("--top", type=int, default=8, help="proponents and opponents shown per query (default 8)")
    a.add_argument("--out", type=Path, default=Path("attribution"), help="output folder (default ./attribution)")
    a.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    a.add_argument("--resize", action="store_true", help="resize/convert queries to the model's size and channels")
    a.add_argument("--config", type=Path, help="experiment config for the method's settings (default: the study's "
                   "config, else the defaults of schemas/config.schema.yaml)")
    a.add_argument("--cache", type=Path, default=_default_cache(), help="cache folder (default %(default)s)")
    a.add_argument("--no-cache", action="store_true", help="compute everything, keep nothing")
    a.add_argument("--cache-dtype", default="float32", choices=["float32", "int8"],
                   help="training gradients in the cache: float32 (exact) or int8 (a quarter of the size)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from diffattr.scores.registry import attribution_sections
    from diffattr.stages.attribute import AttributionError, attribute, config_for

    try:
        if args.study is not None:
            if args.model or args.train:
                raise AttributionError("--study takes the model and training set of the study: drop --model/--train")
            model, train = args.study / "models/full", args.study / "data/train.h5"
            args.query = [str(args.study / "samples" / q) if q.startswith("samples.h5") else q for q in args.query]
            curvature = args.study / "curvature" / f"{args.method}.h5"
        elif args.model is None or args.train is None:
            raise AttributionError("give --study DIR, or both --model DIR and --train PATH")
        else:
            model, train, curvature = args.model, args.train, None
        config = config_for(args.study, args.config)
        sections = attribution_sections(config, args.method)
        summary = attribute(model, train, args.query, args.out, sections, args.method, args.measurement, args.damping,
                            args.top, args.resize, args.device, None if args.no_cache else args.cache,
                            args.cache_dtype, curvature)
    except (AttributionError, ValueError, FileNotFoundError) as exc:
        print(f"diffattr attribute: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/index.html, scores.csv, attribution.json and {len(summary['results'])} picture(s) "
          f"({summary['timings']['scores']:.1f} s scoring)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
