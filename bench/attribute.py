"""Time `diffattr attribute` on the quickstart: a first call (fills the cache: training gradients; the curvature is
the study's) and a second call with a new query (query gradients and dot products only).

    python bench/attribute.py            # after `make run`; target: the second call under 10 s on 2 CPU cores
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from diffattr.cli import main as cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="results/quickstart")
    ap.add_argument("--first", default="examples/digit_7.png")
    ap.add_argument("--second", default="examples/digit_1.png")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="diffattr-bench-"))
    try:
        times = []
        for query in (args.first, args.second):
            t0 = time.perf_counter()
            rc = cli(["attribute", "--study", args.study, "--query", query, "--top", "8", "--out", str(tmp / "out"),
                      "--cache", str(tmp / "cache")])
            times.append(time.perf_counter() - t0)
            if rc:
                raise SystemExit(rc)
        print(f"first call (cache filled)  {times[0]:7.1f} s")
        print(f"second call (cache used)   {times[1]:7.1f} s   target < 10 s: {'met' if times[1] < 10 else 'NOT met'}")
        print(f"ratio first / second       {times[0] / times[1]:7.1f}")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
