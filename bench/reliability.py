"""Reliability campaign on the smoke study: kill, collide, corrupt and feed garbage, then check nothing was lost.

    python bench/reliability.py                 # one command, about 25 minutes on 2 CPU cores
    python bench/reliability.py --only inputs   # one part: kills, collisions, corruption, inputs

1. **Collisions.** The smoke study (reference) and a second experiment run at once in one directory (both must
   finish; the second's datasets equal the reference's); a third run of the reference config meanwhile must be
   refused by Snakemake's lock.
2. **Kills.** One run of the smoke study is interrupted at 10 points (the start of a seeded choice of jobs plus a
   seeded delay: 8 SIGKILLs of the whole process group, one SIGINT, one SIGTERM) and each time recovered the
   documented way (``snakemake --unlock``, then ``--rerun-incomplete``, what ``make resume`` does). At the end every
   metrics JSON and CSV must be byte-identical to the reference, every HDF5 dataset and every model's weights equal.
3. **Corruption.** One artefact of each kind truncated or byte-flipped in a copy of the finished study; the next run
   must fail naming the file and the fix (``delete ... and rerun``).
4. **Bad inputs.** A table of config and data mistakes, each with the first line of its error, which must name the
   key, file or value.

It prints a summary table (also the one in ``docs/reliability.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
PARTS = ["Snakefile", "rules", "report", "scripts", "envs", "config.yaml", "experiments", "examples"]
# the module, not a script beside the interpreter: an install with pip --target (the lent GPU machines) has none there
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
SMOKE = ["--cores", "2", "--configfile", "experiments/smoke.yaml"]
JOB_LINE = re.compile(r"^(?:local)?rule (\w+):", re.M)


def copy_workflow(wd: Path) -> Path:
    wd.mkdir(parents=True)
    for part in PARTS:
        src = REPO / part
        (shutil.copytree(src, wd / part) if src.is_dir() else shutil.copy2(src, wd / part))
    return wd


def start(wd: Path, *args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([*SNAKEMAKE, *args], cwd=wd, stdout=open(log, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)


def run(wd: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, *args], cwd=wd, capture_output=True, text=True, timeout=timeout)


def _datasets(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


# --- comparing two finished studies ---------------------------------------------------------------------------
def compare(a: Path, b: Path, rename: tuple[str, str] | None = None) -> list[str]:
    """Differences between two results folders: metrics/CSVs byte for byte, HDF5 datasets and weights by value."""
    diffs = []
    for fa in sorted(a.rglob("*")):
        rel = fa.relative_to(a)
        if fa.is_dir() or rel.parts[0] in ("logs", "benchmarks", "checkpoints") or rel.suffix == ".png":
            continue
        fb = b / rel
        if not fb.exists():
            diffs.append(f"missing {rel}")
        elif fa.suffix in (".json", ".csv"):
            ta, tb = fa.read_text(), fb.read_text()
            if rename:
                ta = ta.replace(*rename)
            if fa.name == "attribution.json":  # records timings and the cache it used
                ja, jb = json.loads(ta), json.loads(tb)
                ta, tb = (json.dumps(j["results"]) for j in (ja, jb))
            if ta != tb and fa.name != "train_info.json":
                diffs.append(f"{rel} differs")
        elif fa.suffix == ".h5":
            with h5py.File(fa) as x, h5py.File(fb) as y:
                for n in _datasets(x):
                    if not np.array_equal(x[n][()], y[n][()], equal_nan=x[n].dtype.kind == "f"):
                        diffs.append(f"{rel}:{n} differs")
        elif fa.suffix == ".safetensors":
            from safetensors.numpy import load_file

            wa, wb = load_file(str(fa)), load_file(str(fb))
            if wa.keys() != wb.keys() or any(not np.array_equal(wa[k], wb[k]) for k in wa):
                diffs.append(f"{rel} weights differ")
    return diffs


# --- 1. collisions --------------------------------------------------------------------------------------------
def collisions(work: Path) -> tuple[Path, dict]:
    wd = copy_workflow(work / "shared_dir")
    ref = start(wd, *SMOKE, log=work / "ref.log")
    other = start(wd, *SMOKE, "--config", "experiment=smoke_b", log=work / "b.log")
    time.sleep(20)
    third = run(wd, *SMOKE, timeout=600)  # the same config again while it runs
    refused = third.returncode != 0 and "lock" in (third.stdout + third.stderr).lower()
    rc_ref, rc_b = ref.wait(), other.wait()
    same = compare(wd / "results/smoke", wd / "results/smoke_b", rename=('"experiment": "smoke"', '"experiment": "smoke_b"'))
    return wd / "results/smoke", {"refused_same_config": refused, "both_finished": rc_ref == rc_b == 0,
                                  "second_experiment_equal": not same, "differences": same[:5]}


# --- 2. kills -------------------------------------------------------------------------------------------------
PROGRESS = re.compile(r"(\d+) of (\d+) steps")


def kills(work: Path, reference: Path, seed: int, n_kills: int) -> dict:
    """Interrupt one run ``n_kills`` times, spread over the whole DAG: kill point i is the first job that starts once
    the study as a whole has finished a seeded share of its jobs, plus a seeded delay. Recover each time with
    --unlock and --rerun-incomplete (what ``make resume`` does); finally compare with the reference."""
    rng = random.Random(seed)
    wd = copy_workflow(work / "kill_dir")
    total = len(JOB_LINE.findall(run(wd, "-n", *SMOKE).stdout))
    targets = sorted(rng.sample(range(1, total - 1), n_kills))
    # SIGKILLs first, then SIGTERM, SIGINT last: Snakemake may answer SIGINT by finishing its running jobs and exiting
    # cleanly, which would leave nothing for later points to interrupt
    sigs = [signal.SIGKILL] * (n_kills - 2) + [signal.SIGTERM, signal.SIGINT]
    tried, lost = [], 0
    for i, (target, sig) in enumerate(zip(targets, sigs, strict=True)):
        delay = rng.uniform(0.3, 3.0)
        if i:
            run(wd, "--unlock", *SMOKE)
        log = work / f"kill_{i}.log"
        proc = start(wd, *SMOKE, *(["--rerun-incomplete"] if i else []), log=log)
        point, remaining0, fired = None, None, False
        while proc.poll() is None:
            text = log.read_text()
            steps = PROGRESS.findall(text)
            if remaining0 is None:
                m = re.search(r"^total\s+(\d+)", text, re.M)  # this run's job count (its job stats table)
                remaining0 = int(m.group(1)) if m else None
            done = total - remaining0 + (int(steps[-1][0]) if steps else 0) if remaining0 is not None else 0
            if done >= target:
                seen = len(JOB_LINE.findall(text))
                while proc.poll() is None and len(JOB_LINE.findall(log.read_text())) <= seen:
                    time.sleep(0.05)
                jobs = JOB_LINE.findall(log.read_text())
                if len(jobs) > seen:
                    point = jobs[seen]
                    time.sleep(delay)
                    if proc.poll() is None:
                        os.killpg(proc.pid, sig)
                        fired = True
                break
            time.sleep(0.1)
        rc = proc.wait()
        tried.append({"signal": signal.Signals(sig).name, "after_jobs": target, "rule": point,
                      "delay_s": round(delay, 2), "fired": fired, "rc": rc,
                      "log_tail": log.read_text().strip().splitlines()[-2:]})
        if point is None:
            lost += rc != 0  # the run ended by itself before the kill point: it must have succeeded
    run(wd, "--unlock", *SMOKE)
    final = run(wd, *SMOKE, "--rerun-incomplete")
    lost += final.returncode != 0
    diffs = compare(reference, wd / "results/smoke")
    return {"jobs": total, "points": tried, "fired": sum(t["fired"] for t in tried),
            "identical": not diffs and final.returncode == 0, "differences": diffs[:5], "runs_lost": lost,
            "final_rc": final.returncode}


# --- 3. corruption --------------------------------------------------------------------------------------------
# (artefact, how, the rule forced to rerun so that it reads the artefact)
CORRUPTIONS = [
    ("data/train.h5", "truncate", "make_subsets"),
    ("data/subsets.h5", "flip", "compute_lds"),
    ("samples/samples.h5", "flip", "compute_kfac_scores"),
    ("measurements/models/subset0_seed0.h5", "truncate", "gather_measurements"),
    ("curvature/kfac_mc_expand.h5", "flip", "compute_kfac_scores"),
    ("scores/kfac_mc_expand/loss.h5", "truncate", "compute_lds"),
    ("models/subset0_seed0/diffusion_pytorch_model.safetensors", "truncate", "measure_subset"),
    ("metrics/lds.json", "truncate", "plot_figures"),
]


def _corrupt(path: Path, how: str) -> None:
    """Truncate the file, or flip up to 64 bytes inside the data of its largest dataset, keeping its mtime, so that
    Snakemake sees nothing out of date and only the forced rule reads it."""
    stat = path.stat()
    raw = path.read_bytes()
    if how == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    else:
        with h5py.File(path) as f:
            biggest = max(_datasets(f), key=lambda n: f[n].id.get_storage_size())
            at, size = f[biggest].id.get_offset(), f[biggest].id.get_storage_size()
        n = min(64, size)
        path.write_bytes(raw[:at] + bytes(b ^ 0xFF for b in raw[at : at + n]) + raw[at + n :])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def corruption(work: Path, finished: Path) -> list[dict]:
    rows = []
    cases = [*CORRUPTIONS, ("checkpoints/cf0.pt", "garbage checkpoint", "train_model")]
    for rel, how, rule in cases:
        wd = work / f"corrupt_{Path(rel).stem}"
        shutil.copytree(finished, wd, symlinks=True)
        res = wd / "results/smoke"
        if how == "garbage checkpoint":  # training of cf0 must move it aside and restart, not crash
            shutil.rmtree(res / "models/cf0")
            (res / rel).write_bytes(b"PK\x03\x04 not a checkpoint")
            proc = run(wd, str(res.relative_to(wd) / "models/cf0/config.json"), *SMOKE, timeout=1200)
        else:
            _corrupt(res / rel, how)
            proc = run(wd, *SMOKE, "--forcerun", rule, timeout=1200)
        logs = proc.stdout + proc.stderr + "".join(p.read_text(errors="replace") for p in (res / "logs").rglob("*.log"))
        name = Path(rel).name
        hits = [ln.strip() for ln in logs.splitlines() if name in ln and re.search(r"delete|moved it|unreadable", ln)]
        ok = proc.returncode == 0 if how == "garbage checkpoint" else proc.returncode != 0
        rows.append({"artefact": rel, "how": how, "forced": rule, "expected_outcome": ok, "named": bool(hits),
                     "message": re.sub(r"\s+", " ", hits[0] if hits else "")[:240]})
        shutil.rmtree(wd)
    return rows


# --- 4. bad inputs --------------------------------------------------------------------------------------------
def _cases(tmp: Path) -> list[tuple[str, dict, str, bool]]:
    """(case, config overrides over smoke.yaml, text the first error line must contain, needs a run)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    good = tmp / "folder"
    for c in ("a", "b"):
        for i in range(4):
            (good / "train" / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(good / "train" / c / f"{i}.png")
    mixed = tmp / "mixed"
    shutil.copytree(good, mixed)
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(mixed / "train/a/big.png")
    junk = tmp / "junk"
    shutil.copytree(good, junk)
    (junk / "train/a/notes.png").write_text("not an image")
    empty = tmp / "empty"
    shutil.copytree(good, empty)
    (empty / "train/c").mkdir()
    garbage = tmp / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b not a tarball")
    import hashlib

    folder = {"source": "image_folder", "split": "train", "classes": None, "per_class": None}
    return [
        ("typo in a key", {"subsets": {"fractoin": 0.5}}, "did you mean 'fraction'", False),
        ("negative learning rate", {"train": {"lr": -1.0}}, "train.lr", False),
        ("default damping off the grid", {"influence": {"default_damping": 3e-3}}, "influence.default_damping", False),
        ("unknown method", {"evaluate": {"methods": ["kfac", "nope"]}}, "evaluate.methods", False),
        ("timestep beyond T", {"measure": {"timesteps": [1, 5000]}}, "measure.timesteps", False),
        ("unknown attribute method", {"attribute": {"queries": ["x.png"], "method": "nope"}}, "nope", False),
        ("unknown digit class", {"data": {"classes": ["1", "x"]}}, "'x'", True),
        ("too few images per class", {"data": {"per_class": 500}}, "data.per_class", True),
        ("wrong checksum", {"data": {"source": "cifar10_python", "url": (SHARED / "cifar10-jpeg.tar.gz").as_uri(),
                                     "sha256": "0" * 64, "cache_dir": str(tmp / "cache")}}, "data.sha256", True),
        ("corrupt archive", {"data": {**folder, "path": str(garbage)}}, "garbage.tar.gz", True),
        ("missing ../shared", {"data": {**folder, "path": str(tmp / "nowhere/cifar10-jpeg.tar.gz")}},
         "not found", True),
        ("non-image file", {"data": {**folder, "path": str(junk)}}, "notes.png", True),
        ("mixed image sizes", {"data": {**folder, "path": str(mixed)}}, "big.png", True),
        ("empty class folder", {"data": {**folder, "path": str(empty)}}, "['c']", True),
        ("diverging training", {"train": {"lr": 1.0e6, "grad_clip": 1.0e9}}, "train.lr", True),
        ("a split without images", {"data": {**folder, "path": str(good), "split": "test"}}, "data.split", True),
        (f"right sha256, but {garbage.name} is not a tarball",
         {"data": {"source": "cifar10_python", "url": garbage.as_uri(),
                   "sha256": hashlib.sha256(garbage.read_bytes()).hexdigest(), "cache_dir": str(tmp / "cache2")}},
         "garbage.tar.gz", True),
    ]


def bad_inputs(work: Path) -> list[dict]:
    wd = copy_workflow(work / "inputs_dir")
    smoke = yaml.safe_load((REPO / "experiments/smoke.yaml").read_text())
    rows = []
    for i, (case, override, expect, needs_run) in enumerate(_cases(work / "inputs_data")):
        cfg = json.loads(json.dumps(smoke))
        for section, values in override.items():
            cfg[section] = {**cfg.get(section, {}), **values}
        cfg["experiment"] = f"bad{i}"
        (wd / f"bad{i}.yaml").write_text(yaml.safe_dump(cfg))
        target = f"results/bad{i}/" + ("models/full/config.json" if "train" in override else "data/train.h5")
        # targets first: --configfile takes several values
        args = [target, "--cores", "2", "--configfile", f"bad{i}.yaml"] if needs_run else \
            ["-n", "--cores", "1", "--configfile", f"bad{i}.yaml"]
        proc = run(wd, *args, timeout=900)
        text = proc.stdout + proc.stderr + "".join(
            p.read_text(errors="replace") for p in (wd / f"results/bad{i}/logs").rglob("*.log"))
        # the error's own line: "SomeError: message" or "- config key ...", preferring one that names `expect`
        errors = [ln.strip() for ln in text.splitlines()
                  if re.search(r"(^\s*- config key|^\s*[\w.]*(Error|Diverged|Exception): )", ln)]
        first = next((e for e in errors if expect and expect in e), None) or next(
            (ln.strip() for ln in text.splitlines() if expect and expect in ln and "File " not in ln), "")
        rows.append({"case": case, "failed": proc.returncode != 0, "named": bool(expect) and expect in text,
                     "first_line": re.sub(r"\s+", " ", first)[:200]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kills", type=int, default=10, help="interruptions (2 of them SIGINT and SIGTERM)")
    ap.add_argument("--only", choices=["kills", "collisions", "corruption", "inputs"])
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="diffattr-reliability-"))
    t0 = time.time()
    report: dict = {}
    try:
        if args.only in (None, "inputs"):
            report["inputs"] = bad_inputs(work)
        if args.only in (None, "collisions", "kills", "corruption"):
            reference, report["collisions"] = collisions(work)
            if args.only in (None, "kills"):
                report["kills"] = kills(work, reference, args.seed, args.kills)
            if args.only in (None, "corruption"):
                report["corruption"] = corruption(work, reference.parent.parent)
    finally:
        report["minutes"] = round((time.time() - t0) / 60, 1)
        (Path.cwd() / "reliability.json").write_text(json.dumps(report, indent=2, default=str))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_summary(report)
    ok = all([
        report.get("collisions", {}).get("both_finished", True), report.get("collisions", {}).get("refused_same_config", True),
        report.get("collisions", {}).get("second_experiment_equal", True), report.get("kills", {}).get("identical", True),
        all(r["named"] and r["expected_outcome"] for r in report.get("corruption", [])),
        all(r["named"] for r in report.get("inputs", [])), report.get("kills", {}).get("fired", 8) >= 8,
    ])
    sys.exit(0 if ok else 1)


def print_summary(r: dict) -> None:
    print(f"\nreliability campaign ({r['minutes']} min); details in reliability.json\n")
    if "collisions" in r:
        c = r["collisions"]
        print(f"collisions: same config refused by the lock: {c['refused_same_config']}; two experiments in one "
              f"directory both finished: {c['both_finished']}, results equal: {c['second_experiment_equal']}")
    if "kills" in r:
        k = r["kills"]
        print(f"kills: {k['fired']} of {len(k['points'])} interruptions fired over {k['jobs']} jobs "
              f"({', '.join(p['signal'] + '@' + str(p['rule']) for p in k['points'] if p['fired'])}); recovered identical: "
              f"{k['identical']}; runs lost: {k['runs_lost']}")
        for d in k["differences"]:
            print(f"  difference: {d}")
    if "corruption" in r:
        rows = r["corruption"]
        print(f"corruption: {sum(x['named'] for x in rows)} of {len(rows)} named")
        for x in rows:
            print(f"  {x['artefact']:<58} {x['how']:<9} named={x['named']!s:<5} {x['message'][:110]}")
    if "inputs" in r:
        rows = r["inputs"]
        print(f"bad inputs: {sum(x['named'] for x in rows)} of {len(rows)} named")
        for x in rows:
            print(f"  {x['case']:<46} named={x['named']!s:<5} {x['first_line'][:120]}")


if __name__ == "__main__":
    main()
