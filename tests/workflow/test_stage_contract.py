"""The stage contract: every rule runs the stage function of its name, given exactly the rule's ``params:``.

Walks the rules of the parsed workflow (Snakemake's own parser), so a rule added without a stage, a stage that
takes a config section its rule does not declare, or a script that hands over more than ``snakemake.params``
fails here. Also checks the layering: library packages never import the stage layer, and no package imports one
above it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SRC = REPO / "src/diffattr"

# Lower levels never import higher ones (same level: allowed). stages and cost sit on top of everything.
LEVELS = {
    "queries": 0, "config": 0, "io": 0, "runtime": 0,
    "data": 1, "diffusion": 1, "models": 1, "sampling": 1,
    "measure": 2, "curvature": 2, "gradients": 2, "train": 2,
    "scores": 3, "evaluate": 4, "plots": 4,
    "cost": 5, "stages": 5, "cli": 6,
}


@pytest.fixture(scope="module")
def rules():
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        OutputSettings,
        ResourceSettings,
        StorageSettings,
        WorkflowSettings,
    )

    with SnakemakeApi(OutputSettings()) as api:
        wf = api.workflow(resource_settings=ResourceSettings(), storage_settings=StorageSettings(),
                          config_settings=ConfigSettings(configfiles=[REPO / "experiments/smoke.yaml"]),
                          workflow_settings=WorkflowSettings(), snakefile=REPO / "Snakefile", workdir=REPO)
        return {r.name: r for r in wf._workflow.rules if r.name != "all"}


def _stage_of(script: Path) -> tuple[str, str, list[ast.Call]]:
    """(module, function) a rule script runs, and its top-level calls."""
    tree = ast.parse(script.read_text())
    imports = {a.asname or a.name: node.module for node in tree.body if isinstance(node, ast.ImportFrom)
               for a in node.names}
    calls = [n.value for n in tree.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)]
    assert len(calls) == 1 and ast.unparse(calls[0].func) == "run_stage", f"{script}: must be one run_stage call"
    assert ast.unparse(calls[0].args[0]) == "snakemake" and len(calls[0].args) == 2 and not calls[0].keywords
    name = ast.unparse(calls[0].args[1])
    return imports[name], name, calls


def test_every_rule_runs_the_stage_of_its_name_with_exactly_its_params(rules):
    assert len(rules) >= 13
    for name, rule in rules.items():
        script = (REPO / "rules" / rule.script).resolve()
        module, function = _stage_of(script)[:2]
        assert function == name and module.startswith("diffattr.stages."), (name, module, function)
        stage = getattr(importlib.import_module(module), function)
        sig = inspect.signature(stage)
        positional = [p.name for p in sig.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
        keywords = {p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}
        assert positional == ["input", "output"], (name, positional)
        assert not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()), f"{name}: **kwargs hides reads"
        assert keywords == set(rule.params._names), (name, sorted(keywords), sorted(rule.params._names))


def _attribute_reads(function) -> dict[str, set[str]]:
    tree = ast.parse(inspect.getsource(function))
    reads: dict[str, set[str]] = {"input": set(), "output": set()}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in reads:
            reads[node.value.id].add(node.attr)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "getattr" and isinstance(node.args[0], ast.Name) \
                and node.args[0].id in reads:
            reads[node.args[0].id].add(node.args[1].value)
    return reads


def test_stages_read_only_declared_paths(rules):
    for name, rule in rules.items():
        module = _stage_of((REPO / "rules" / rule.script).resolve())[0]
        reads = _attribute_reads(getattr(importlib.import_module(module), name))
        declared_out = set(rule.output._names)
        assert reads["output"] <= declared_out, (name, reads["output"] - declared_out)
        if rule.input._names:  # rules whose inputs come from a function (unpack) have no static names
            assert reads["input"] <= set(rule.input._names), (name, reads["input"] - set(rule.input._names))


def test_a_stage_is_given_nothing_but_its_params():
    """run_stage hands over snakemake.params and the named paths only: an undeclared key is a TypeError."""
    from types import SimpleNamespace

    from diffattr.runtime import run_stage

    class Named(dict):
        pass

    seen = {}

    def stage(input, output, *, a):
        seen.update(input=vars(input), output=vars(output), a=a)

    smk = SimpleNamespace(input=Named(x="in.h5"), output=Named(y=["o1", "o2"]), params=Named(a=1), log=[], threads=1,
                          rule="t", config={"unrelated": 1})
    run_stage(smk, stage)
    assert seen == {"input": {"x": "in.h5"}, "output": {"y": ["o1", "o2"]}, "a": 1}
    smk.params = Named(a=1, b=2)
    with pytest.raises(TypeError, match="'b'"):
        run_stage(smk, stage)


def _imports(path: Path) -> list[tuple[str, int]]:
    """``diffattr`` packages a module imports, with the line (module level or not)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diffattr."):
            out.append((node.module.split(".")[1], node.lineno))
    return out


def test_packages_import_only_downwards():
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        package = rel.parts[0].removesuffix(".py")
        if package == "__init__":
            continue
        for imported, line in _imports(path):
            if imported != package and LEVELS[imported] > LEVELS[package]:
                bad.append(f"{rel}:{line} imports diffattr.{imported}")
    assert not bad, bad



def test_error_messages_name_rules_that_exist(rules):
    """io.PRODUCERS (the rule an unreadable artefact is rebuilt by) names only real rules."""
    from diffattr.io import PRODUCERS

    assert {rule for _, rule in PRODUCERS} <= set(rules)


def test_jobs_that_only_read_artefacts_do_not_import_diffusers():
    """The CPU jobs between the fleet and the counterfactual runs (gather_measurements, compute_lds, plot_figures,
    select_counterfactuals) start without diffusers, which costs 3-4 s of every job's start-up (diffusers imports
    its transformer classes, transformers and torch._dynamo); a top-level import of diffattr.models fails this."""
    code = "import sys, diffattr.stages.evaluate, diffattr.stages.measure; print(sorted(m for m in sys.modules " \
           "if m.split('.')[0] in ('diffusers', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
