"""The conda environments of envs/ parse, pin what requirements/constraints.txt pins, and install diffattr."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins[_norm(re.sub(r"\[.*\]", "", name))] = version.strip()
    return pins


CONSTRAINTS = _pins((REPO / "requirements/constraints.txt").read_text().splitlines())


def test_there_is_an_env_and_the_rules_use_it():
    assert ENV_FILES
    rules = "".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    for env in ENV_FILES:
        assert f'"../envs/{env.name}"' in rules


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_agree_with_the_constraints_file(env_file: Path):
    env = yaml.safe_load(env_file.read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11"
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-c ../requirements/constraints.txt" in pip  # transitive pins too
    pins = _pins(pip)
    assert {"torch", "diffusers", "h5py", "scipy", "traker", "snakemake"} <= set(pins)
    for name, version in pins.items():
        assert CONSTRAINTS.get(name) == version, f"{env_file.name}: {name}=={version}, constraints: {CONSTRAINTS.get(name)}"
    base = _pins((REPO / "requirements/base.txt").read_text().splitlines())
    for name, version in base.items():
        if name in pins:
            assert pins[name] == version


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_post_deploy_installs_curvlinops_and_the_package(env_file: Path):
    script = env_file.with_suffix(".post-deploy.sh").read_text()
    assert "requirements/nodeps.txt" in script  # curvlinops, pinned, --no-deps
    assert re.search(r"pip install --no-deps .*-e ", script)
    nodeps = _pins((REPO / "requirements/nodeps.txt").read_text().splitlines())
    for name, version in nodeps.items():
        assert CONSTRAINTS.get(name) == version
