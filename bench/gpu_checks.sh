#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (README, "GPU checks"): the gpu-marked tests and the CLIP
# tests (open_clip imports there), the training-throughput and unit-cost benchmarks, and bench/influence.py and
# bench/oracle_settings.py (bf16 + inductor oracles) on the quickstart (needs results/quickstart after make run).
# Writes its outputs to $OUT (default out/).
# Where the project's environment is not installed, wheels in .whl/ are installed to /tmp/site first.
set -o pipefail
OUT="${OUT:-out}"; mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="$PWD/src:/tmp/site:$PWD"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/env.txt"
python3 -c "import torch, diffusers, curvlinops, trak; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'curvlinops', curvlinops.__version__)" 2>&1 | tail -2 | tee -a "$OUT/env.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/scores/test_clip.py 2>&1 | tail -25 | tee "$OUT/pytest.txt"
timeout 120 python3 bench/train_throughput.py 2>&1 | tee "$OUT/train_throughput.txt"
timeout 150 python3 bench/unit_costs.py --json "$OUT/cost_reference.json" 2>&1 | tail -30 | tee "$OUT/unit_costs.txt"
timeout 90 python3 bench/influence.py 2>&1 | tail -20 | tee "$OUT/influence.txt"
timeout 150 python3 bench/oracle_settings.py --precision bf16 --compile true --trajectories 16 2>&1 | tail -40 | tee "$OUT/oracle_precision.txt"
echo "gpu checks done"
