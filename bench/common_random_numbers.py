"""How common random numbers change LDS magnitudes: the study's oracles measured again with independent draws.

Every retrained model (and the full model) of a finished study is measured again with
``measure.common_random_numbers: false`` (each model's (t, ε) draws seeded by its id as well), and the LDS of the
exact-retraining oracle and of the study's score files is computed on both sets of measurements. With common
random numbers the Monte-Carlo noise of the oracles largely cancels between models; without them it enters the
actual changes the scores are compared with.

    python bench/common_random_numbers.py [--config config.yaml] [--methods kfac_mc_expand trak]

Needs a finished study (``make run``); writes its measurements to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from diffattr.config import deep_merge, load_config
from diffattr.runtime import named_paths as _paths
from diffattr.stages.evaluate import compute_lds
from diffattr.stages.measure import gather_measurements, measure_model


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--methods", nargs="+", default=["kfac_mc_expand", "trak", "dtrak"])
    args = ap.parse_args()
    cfg = load_config(args.config)
    res = Path("results") / cfg["experiment"]
    study = json.loads((res / "metrics/lds.json").read_text())
    models = ["full", *[f"subset{m}_seed{k}" for m in range(cfg["subsets"]["n_subsets"])
                        for k in range(cfg["subsets"]["seeds_per_subset"])]]
    off = deep_merge(cfg, {"measure": {"common_random_numbers": False}})
    pairs = [p for p in cfg["evaluate"]["pairs"] if p["scores"] == p["target"]]
    scores = [res / f"scores/{m}/{p['scores']}.h5" for m in args.methods for p in pairs]
    with tempfile.TemporaryDirectory() as tmp:
        paths = [str(Path(tmp) / f"{m}.h5") for m in models]
        for m, out in zip(tqdm(models, desc="measure (independent draws)"), paths, strict=True):
            measure_model(_paths({"model": [str(res / "models" / m / "config.json")],
                                  "samples": str(res / "samples/samples.h5")}), _paths({"measurements": out}),
                          model_id=m, measure=off["measure"], diffusion=off["diffusion"], device=off["device"])
        gather_measurements(_paths({"measurements": paths}), _paths({"measurements": str(Path(tmp) / "m.h5")}),
                            timesteps=off["measure"]["timesteps"])
        compute_lds(_paths({"measurements": str(Path(tmp) / "m.h5"), "subsets": str(res / "data/subsets.h5"),
                            "scores": [str(s) for s in scores]}),
                    _paths({"lds": str(Path(tmp) / "lds.json"), "per_sample": str(Path(tmp) / "lds.csv")}),
                    experiment=off["experiment"], evaluate={**off["evaluate"], "pairs": pairs, "timestep_matrix": False},
                    timesteps=off["measure"]["timesteps"])
        indep = json.loads((Path(tmp) / "lds.json").read_text())

    def best(summary, method, target):
        r = next(r for r in summary["results"] if r["method"] == method and r["scores"] == r["target"] == target)
        return r["best"]["mean"], r["best"]["se"]

    print(f"LDS (%) of {cfg['experiment']}, best damping, mean ± s.e. over {study['n_samples']} samples")
    print(f"{'target':<12} {'method':<16} {'common draws':>14} {'independent':>14}")
    for p in pairs:
        t = p["target"]
        o_on, o_off = study["oracle"][t], indep["oracle"][t]
        print(f"{t:<12} {'oracle':<16} {100 * o_on['mean']:>7.1f} ± {100 * o_on['se']:<4.1f} "
              f"{100 * o_off['mean']:>7.1f} ± {100 * o_off['se']:<4.1f}")
        for m in args.methods:
            (a, sa), (b, sb) = best(study, m, t), best(indep, m, t)
            print(f"{t:<12} {m:<16} {100 * a:>7.1f} ± {100 * sa:<4.1f} {100 * b:>7.1f} ± {100 * sb:<4.1f}")


if __name__ == "__main__":
    main()
