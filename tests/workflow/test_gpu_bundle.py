"""bench/gpu_bundle.py and bench/gpu_checks.sh: what a lent GPU machine is sent must be complete, since nothing can be
fetched there. The install itself is checked by hand in a bare environment (docs/benchmarks.md, "A GPU session")."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import distribution

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import gpu_bundle  # noqa: E402

PY312 = {"python_version": "3.12", "python_full_version": "3.12.0", "extra": "", "platform_machine": "x86_64",
         "sys_platform": "linux", "platform_system": "Linux"}


def test_every_requirement_of_the_bundle_is_carried_or_in_the_image():
    image = {gpu_bundle.normalize(n) for n in gpu_bundle.IMAGE}
    pins = gpu_bundle.closure(gpu_bundle.ROOTS, image, "3.12")
    assert {"diffusers", "snakemake", "traker", "einconv", "jsonschema", "rpds-py", "sqlmodel"} <= set(pins)
    assert not set(pins) & image and "torch" not in pins
    for name, version in pins.items():
        dist = distribution(name)
        assert dist.version == version  # pinned to this environment
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(PY312):
                assert gpu_bundle.normalize(req.name) in set(pins) | image, f"{name} needs {req.name}"


def test_a_requirement_that_is_not_installed_names_it():
    with pytest.raises(SystemExit, match="no-such-package is needed but not installed here"):
        gpu_bundle.closure(["no_such.package"], set(), "3.12")


def test_an_unknown_phase_is_refused_before_anything_runs(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "bench/gpu_checks.sh"), "tests", "train"], cwd=REPO, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path)}, timeout=60)
    assert proc.returncode == 2 and "unknown phase 'train'" in proc.stderr
    assert not list(tmp_path.iterdir())  # stopped before the environment report
