#!/usr/bin/env bash
# Run by Snakemake inside the freshly created conda env (envs/diffattr.yaml), from the workflow's directory:
# Snakemake copies this script into .snakemake/conda/, so the repository is found from the working directory.
set -euo pipefail
root="${DIFFATTR_ROOT:-$PWD}"
if [ ! -f "$root/requirements/nodeps.txt" ] || [ ! -f "$root/pyproject.toml" ]; then
    echo "diffattr post-deploy: $root is not the diffattr repository; run snakemake from it or set DIFFATTR_ROOT" >&2
    exit 1
fi
pip install --no-deps -c "$root/requirements/constraints.txt" -r "$root/requirements/nodeps.txt"
pip install --no-deps --no-build-isolation -e "$root"
