#!/usr/bin/env bash
# The GPU checks, in phases, for a lent GPU machine (docs/benchmarks.md, "A GPU session"):
#
#   bash bench/gpu_checks.sh tests costs     # gpu-marked and CLIP tests; CUDA graphs' speed-up; unit costs (2 presets)
#   bash bench/gpu_checks.sh fleet           # bench/fleet.py: models per hour with 1, 2, 4, 8 jobs on the GPU
#   bash bench/gpu_checks.sh fleet-mps       # the same under CUDA MPS (the jobs' kernels may then run concurrently)
#   bash bench/gpu_checks.sh cifar2-mini     # experiments/cifar2-mini.yaml end to end (profiles/workstation)
#   bash bench/gpu_checks.sh oracles         # bench/oracle_settings.py (bf16 + compiled oracles) on that study
#   bash bench/gpu_checks.sh smoke           # imports and Snakemake dry runs only (seconds; also on a CPU)
#
# Where the project's environment is not installed (the lent machines: no registry, no ../shared), run `python
# bench/gpu_bundle.py` here first and carry .gpu: its wheels are installed to /tmp/site and its CIFAR-10 copy is
# used in place of ../shared/datasets. Each phase writes $OUT/<phase>.log (default OUT=out) and stops at its own
# time limit (seconds; DIFFATTR_GPU_LIMITS="costs=300 fleet=200" overrides), so one call returns within the sum.
set -o pipefail
OUT="${OUT:-out}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
declare -A LIMIT=([smoke]=120 [tests]=160 [costs]=320 [fleet]=150 [fleet-mps]=150 [cifar2-mini]=540 [oracles]=300)
for kv in ${DIFFATTR_GPU_LIMITS:-}; do LIMIT[${kv%%=*}]=${kv#*=}; done
PHASES=("$@"); [ ${#PHASES[@]} -gt 0 ] || PHASES=(tests costs)
for p in "${PHASES[@]}"; do
    [ -n "${LIMIT[$p]:-}" ] || { echo "gpu_checks: unknown phase '$p' (smoke, tests, costs, fleet, fleet-mps, cifar2-mini, oracles)" >&2; exit 2; }
done

CONFIGS=()
if [ -d .gpu/whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
fi
# the wheels installed by this call or an earlier one on the same (warm) machine, where python3 lacks the packages
if [ -d /tmp/site/diffusers ] && ! python3 -c "import diffusers, snakemake" 2>/dev/null; then
    export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH"
fi
if [ -f .gpu/datasets/cifar10-jpeg.tar.gz ] && [ ! -f ../shared/datasets/cifar10-jpeg.tar.gz ]; then
    printf 'data:\n  path: %s\n' "$PWD/.gpu/datasets/cifar10-jpeg.tar.gz" > /tmp/gpu_data.yaml
    CONFIGS=(/tmp/gpu_data.yaml)  # after the experiment's own file: only data.path changes
fi
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    python3 -c "import sys, torch, diffattr.stages.train; from importlib.metadata import version as v; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), *(f'{p} {v(p)}' for p in ('diffusers', 'curvlinops-for-pytorch', 'traker', 'snakemake', 'transformers', 'numpy')))"
} 2>&1 | tee "$OUT/env.txt" || exit 1

study() {  # snakemake on experiments/$1.yaml (+ the data overlay) with the workstation profile: one GPU, 4 jobs on it
    DIFFATTR_GPUS="${DIFFATTR_GPUS:-0}" DIFFATTR_JOBS_PER_GPU="${DIFFATTR_JOBS_PER_GPU:-4}" \
        python3 -m snakemake --profile profiles/workstation --configfile "experiments/$1.yaml" "${CONFIGS[@]}" "${@:2}"
}

phase() {
    local p=$1 lim=${LIMIT[$1]}
    echo "== $p (limit ${lim} s) $(date -u +%H:%M:%S)"
    case $p in
    smoke)
        python3 -c "import diffattr.stages.train, diffattr.stages.measure, diffattr.stages.influence, diffattr.stages.baselines, diffattr.stages.evaluate, diffattr.stages.attribute, diffattr.cost" &&
        timeout "$lim" python3 -m snakemake -n -q --cores 1 &&
        study cifar2-mini -n -q ;;
    tests)  # the CUDA-graph tests last (compilations of unknown length there): the others' results come first
        timeout $((lim * 2 / 3)) python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/scores/test_clip.py -k "not reduce-overhead"
        timeout $((lim - lim * 2 / 3)) python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "reduce-overhead" ;;
    costs)  # cifar2-mini's training step with and without CUDA graphs (train.compile: reduce-overhead, for a U-Net
            # bound by kernel launches); the unit costs of its U-Net (never measured on a GPU), then of the paper's
            # (a JSON stops where the limit cuts it: an incomplete one is refused by diffattr.cost)
        local tp=$((lim / 4))  # 80 s of the default 320
        timeout $tp python3 bench/train_throughput.py --presets unet_cifar_small --batch 128 --steps 50 \
            --precisions tf32 tf32+cudagraphs
        timeout $(((lim - tp) * 55 / 100)) python3 bench/unit_costs.py --preset unet_cifar_small --json "$OUT/cost_reference_unet_cifar_small.json" | tail -40
        timeout $(((lim - tp) * 45 / 100)) python3 bench/unit_costs.py --preset ddpm_cifar --json "$OUT/cost_reference.json" | tail -40
        python3 -m diffattr.cost experiments/cifar2-mini.yaml --reference "$OUT/cost_reference_unet_cifar_small.json"
        python3 -m diffattr.cost experiments/cifar2.yaml --reference "$OUT/cost_reference.json"
        true ;;
    fleet)
        timeout "$lim" python3 bench/fleet.py --config experiments/cifar2-mini.yaml --jobs 1 2 4 8 ;;
    fleet-mps)  # the control daemon in its own directories, quit at the end (the GPU's settings are not touched)
        if ! command -v nvidia-cuda-mps-control >/dev/null; then
            echo "fleet-mps: nvidia-cuda-mps-control is not installed"
        else
            export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
            mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
            nvidia-cuda-mps-control -d && timeout "$lim" python3 bench/fleet.py --config experiments/cifar2-mini.yaml --jobs 1 2 4 8
            echo quit | nvidia-cuda-mps-control
        fi ;;
    cifar2-mini)  # the wall time is Snakemake's "Elapsed time"; metrics, logs and benchmarks come back as one archive
        local t0=$SECONDS
        timeout "$lim" bash -c "$(declare -p CONFIGS); $(declare -f study); study cifar2-mini"
        echo "cifar2-mini: rc $? after $((SECONDS - t0)) s"
        python3 -m diffattr.cost --spent results/cifar2-mini  # GPU-slot seconds by rule, also of a run cut short
        tar czf "$OUT/cifar2-mini.tgz" results/cifar2-mini/metrics results/cifar2-mini/benchmarks results/cifar2-mini/logs \
            results/cifar2-mini/figures .snakemake/log 2>/dev/null
        true ;;
    oracles)
        timeout "$lim" python3 bench/oracle_settings.py --study results/cifar2-mini --configfile experiments/cifar2-mini.yaml \
            "${CONFIGS[@]}" --precision bf16 --compile true | tail -40 ;;
    esac
    echo "== $p done (rc $?) $(date -u +%H:%M:%S)"
}

for p in "${PHASES[@]}"; do
    phase "$p" 2>&1 | tee "$OUT/$p.log"
done
echo "gpu checks done: ${PHASES[*]}"
