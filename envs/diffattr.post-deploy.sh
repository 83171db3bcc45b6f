#!/usr/bin/env bash
# Run by Snakemake inside the freshly created conda env (see envs/diffattr.yaml).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pip install --no-deps -c "$root/requirements/constraints.txt" -r "$root/requirements/nodeps.txt"
pip install --no-deps -e "$root"
