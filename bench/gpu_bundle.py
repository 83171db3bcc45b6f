"""Pack what a lent GPU machine lacks into ``.gpu/`` (git-ignored), for ``bash bench/gpu_checks.sh`` there.

The GPU machines this project is lent (docs/benchmarks.md, "A GPU session") reach no package registry and see neither this
checkout's ``.venv`` nor ``../shared``. Their image holds Python 3.12 with torch and most of the scientific stack;
what diffattr needs beyond it (diffusers, snakemake, traker, curvlinops, jsonschema and their own needs) travels as
wheels, pinned to the versions of this project's environment, and the offline CIFAR-10 copy travels beside them:

    python bench/gpu_bundle.py                     # here, with the project's .venv: writes .gpu/whl, .gpu/datasets
    # then, through the device tool, carrying [".gpu"]: "bash bench/gpu_checks.sh tests costs", then "... fleet"

The packages of the machine's image are listed below (the lending workplace's notes on that image, read
2026-11-17); a package in that list is not carried, so the image's version is the one used there.
``tests/workflow/test_gpu_bundle.py`` checks that the closure is complete. ``--python-version 3.11`` packs wheels
for this machine instead: installed into a bare environment holding only the image's packages, they check the
install itself on a CPU (docs/benchmarks.md, "A GPU session").
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement

# What diffattr imports at run time beyond the image, and what Snakemake needs to run the workflow there (dvc and
# the SLURM plugin are not needed on one machine). curvlinops is installed without its declared dependencies here
# too (requirements/nodeps.txt): backpack-for-pytorch pulls torchvision.
ROOTS = ["diffusers", "snakemake", "traker", "einconv", "jsonschema"]
NO_DEPS = ["curvlinops-for-pytorch"]

# The 'cuda' image of the lent H200 machines (its Python packages as the workplace lists them, 2026-11-17).
IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx humanize huggingface-hub hypothesis idna
imageio interface-meta iniconfig jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp""".split()

PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
REPO = Path(__file__).resolve().parents[1]
DATASET = REPO.parent / "shared/datasets/cifar10-jpeg.tar.gz"  # ../shared beside the checkout


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str], image: set[str], python_version: str) -> dict[str, str]:
    """``{name: version}`` of the roots and everything they need (as installed here), minus the image's packages.

    Requirements are read from the installed distributions' metadata, with environment markers evaluated for the
    target Python (extras are not followed).
    """
    env = {"python_version": python_version, "python_full_version": f"{python_version}.0", "extra": "",
           "platform_machine": "x86_64", "sys_platform": "linux", "platform_system": "Linux"}
    found: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = normalize(todo.pop())
        if name in found or name in image:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError as err:
            raise SystemExit(f"gpu_bundle: {name} is needed but not installed here; run `make install` first") from err
        found[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(req.name)
    return found


def download(pins: dict[str, str], dest: Path, python_version: str) -> None:
    """Wheels of ``pins`` for CPython ``python_version`` on x86-64 Linux, without their dependencies: the published
    binary wheel, else one built here from the source release (pure-Python packages only: a built wheel that is not
    ``py3-none-any`` would be for this machine's Python and is refused)."""
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    for name, version in sorted(pins.items()):
        spec = f"{name}=={version}"
        binary = pip + ["download", "-q", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
                        "--python-version", python_version, *platforms, "-d", str(dest), spec]
        if subprocess.run(binary, capture_output=True, text=True).returncode == 0:
            continue
        before = set(dest.iterdir())
        subprocess.run(pip + ["wheel", "-q", "--no-deps", "-w", str(dest), spec], check=True)
        built = [f for f in set(dest.iterdir()) - before if f.suffix == ".whl"]
        if not built or not all(f.name.endswith("-py3-none-any.whl") for f in built):
            raise SystemExit(f"gpu_bundle: {spec} has no wheel for Python {python_version} and is not pure Python")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / ".gpu", help="default: .gpu in the checkout (git-ignored)")
    ap.add_argument("--python-version", default="3.12", help="the GPU machine's Python (3.11: a check here)")
    ap.add_argument("--no-dataset", action="store_true", help="wheels only")
    ap.add_argument("--list", action="store_true", help="print the pinned packages and stop")
    args = ap.parse_args()
    image = {normalize(n) for n in IMAGE}
    pins = closure(ROOTS, image, args.python_version)
    pins.update({normalize(n): distribution(n).version for n in NO_DEPS})
    if args.list:
        print("\n".join(f"{n}=={v}" for n, v in sorted(pins.items())))
        return
    whl = args.out / "whl"
    if whl.exists():
        shutil.rmtree(whl)
    download(pins, whl, args.python_version)
    if not args.no_dataset:
        if not DATASET.exists():
            raise SystemExit(f"gpu_bundle: {DATASET} not found (the offline CIFAR-10 copy, ../shared/datasets/README)")
        (args.out / "datasets").mkdir(parents=True, exist_ok=True)
        for f in (DATASET, DATASET.with_name(DATASET.name + ".sha256")):
            if f.exists():
                shutil.copy2(f, args.out / "datasets" / f.name)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{len(pins)} wheels in {whl}, {size / 2**20:.1f} MiB in {args.out} in all (the device tool carries at most "
          f"64 MiB with the working tree)")


if __name__ == "__main__":
    main()
