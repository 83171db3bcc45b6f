"""Models trained per hour on one device with 1, 2, 4 and 8 training jobs side by side (issue #17's packed fleet).

Each job is its own process, as under Snakemake (profiles/workstation): it trains one model of an experiment's
recipe (model preset, image size, batch, precision, compile) on random data for ``--steps`` steps. The jobs of a
round start their training together: each first imports, builds its model and initialises the device, says it is
ready, and waits until all are; the round's training time (from that start to the last job's end) gives models per
hour, and its ratio to one job at a time is what packing buys for jobs long enough that their start-up does not
count (a fleet job trains 2 x 2,000 steps). The round's wall time with the start-ups is printed beside it. On a CPU
the numbers only show that the script runs (the jobs share the cores).

    python bench/fleet.py [--config experiments/cifar2-mini.yaml] [--jobs 1 2 4 8] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

JOB = r"""
import json, sys, time, torch
from diffattr.diffusion import Schedule
from diffattr.models import build_unet
from diffattr.train import train
spec = json.loads(sys.argv[1])
device = "cuda" if torch.cuda.is_available() else "cpu"
torch.set_num_threads(spec["threads"])
data = torch.rand(spec["n"], spec["channels"], spec["size"], spec["size"]) * 2 - 1
model = build_unet(spec["preset"], in_channels=spec["channels"], sample_size=spec["size"])
torch.zeros(1, device=device)  # the device's context, before the common start
print("ready", flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
train(model, data, Schedule.linear(), spec["train"], seed=spec["seed"], steps=spec["steps"], device=device,
      progress=False)
print(json.dumps({"seconds": time.perf_counter() - t0, "end": time.time()}))
"""


def run_round(jobs: int, spec: dict) -> tuple[float, float, list[float]]:
    """Start ``jobs`` training processes, let them train together once all are ready: seconds from that common
    start to the last one's end, seconds of the whole round (start-ups included), and each job's own training time."""
    t_launch = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", JOB, json.dumps({**spec, "seed": k})], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for k in range(jobs)]
    for p in procs:
        if p.stdout.readline().strip() != "ready":
            for q in procs:  # the others would start training once their stdin closes
                q.kill()
            raise RuntimeError(f"a training job failed before its start (exit code {p.wait()})")
    t0 = time.time()  # the wall clock, which the jobs share: the span ends at the last training's end, not exit
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a training job failed (exit codes {[p.returncode for p in procs]})")
    results = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    return max(r["end"] for r in results) - t0, time.perf_counter() - t_launch, [r["seconds"] for r in results]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="experiments/cifar2-mini.yaml", help="experiment whose model and recipe to train")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--steps", type=int, default=200, help="training steps per model (the recipe's own is longer)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads per job")
    args = ap.parse_args()

    import yaml

    from diffattr.config import load_config

    cfg = load_config("config.yaml", yaml.safe_load(Path(args.config).read_text()))
    digits = cfg["data"]["source"] == "digits"  # scikit-learn's 8x8 grey digits; the others are CIFAR's 32x32 RGB
    size = cfg["data"].get("resize") or (8 if digits else 32)
    channels = 1 if digits else 3
    spec = {"preset": cfg["model"]["preset"], "size": size, "channels": channels, "n": 1000, "threads": args.threads,
            "steps": args.steps, "train": {**cfg["train"], "checkpoint_every": 10**9}}
    gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if gpu else "CPU (the jobs share its cores: not a fleet measurement)"
    print(f"device: {device}; torch {torch.__version__}; {cfg['experiment']}: {spec['preset']} at {size}x{size}, "
          f"batch {cfg['train']['batch_size']}, {cfg['train']['precision']}"
          f"{' + compile' if cfg['train'].get('compile') else ''}; {args.steps} steps per model")
    print(f"{'jobs':>4} {'train s':>8} {'job s (mean)':>12} {'models/h':>9} {'vs 1 job':>9} {'wall s':>7}")
    base = None
    for jobs in args.jobs:
        span, wall, each = run_round(jobs, spec)
        per_hour = jobs * 3600 / span
        base = base or per_hour
        print(f"{jobs:>4} {span:>8.2f} {sum(each) / len(each):>12.2f} {per_hour:>9.1f} {per_hour / base:>8.2f}x "
              f"{wall:>7.1f}", flush=True)

if __name__ == "__main__":
    main()
