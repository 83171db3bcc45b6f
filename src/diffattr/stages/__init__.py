"""The stage layer: one function per Snakemake rule, named exactly like the rule.

Contract (checked for every rule by ``tests/workflow/test_stage_contract.py``): a stage is called as
``stage(input, output, **params)`` by :func:`diffattr.runtime.run_stage`, where ``input`` and ``output`` hold only
the rule's *named* paths (attribute access; lists stay lists) and ``params`` are exactly the rule's ``params:``,
nothing else. A stage never sees the whole config, so what the rule declares is what the stage reads, and
Snakemake's params rerun trigger covers every value that shapes an artefact.

Stages orchestrate (read artefacts, call the library, write artefacts, log timings); the library packages below
them (:mod:`diffattr.data`, :mod:`diffattr.train`, :mod:`diffattr.measure`, :mod:`diffattr.curvature`,
:mod:`diffattr.gradients`, :mod:`diffattr.scores`, :mod:`diffattr.evaluate`, :mod:`diffattr.plots`) compute and
never import this layer.

Modules follow ``rules/*.smk``: :mod:`.data`, :mod:`.train`, :mod:`.measure`, :mod:`.influence`,
:mod:`.baselines`, :mod:`.evaluate`, :mod:`.attribute`, :mod:`.ablations`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Paths(Protocol):
    """A rule's named inputs or outputs: ``paths.train`` is a path, ``paths.scores`` a list of paths."""

    def __getattr__(self, name: str) -> Any: ...


def model_dir(files: list[str] | str) -> Path:
    """The directory of a trained model from the files ``train_model`` wrote (all in one folder)."""
    files = [files] if isinstance(files, str) else list(files)
    dirs = {Path(f).parent for f in files}
    if len(dirs) != 1:
        raise ValueError(f"the model files are not in one directory: {sorted(map(str, dirs))}")
    return dirs.pop()
