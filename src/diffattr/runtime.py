"""Run-time plumbing shared by the rule scripts: logging to the rule's log, threads, device choice."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

log = logging.getLogger("diffattr")


@contextlib.contextmanager
def rule_context(smk: Any) -> Iterator[None]:
    """Set up a rule script: log (and stderr, where tqdm writes) to ``smk.log[0]``, threads from ``smk.threads``.

    Args:
        smk: The ``snakemake`` object Snakemake injects into scripts (duck-typed; this module never imports
            snakemake). Uses ``log``, ``threads`` and ``rule``.
    """
    log_path = smk.log[0] if len(smk.log) else None
    threads = int(getattr(smk, "threads", 1) or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    stream = open(log_path, "a", buffering=1) if log_path else sys.stderr  # noqa: SIM115
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.StreamHandler(stream)],
        force=True,
    )
    old_stderr = sys.stderr
    sys.stderr = stream
    log.info("rule %s started (threads=%d)", getattr(smk, "rule", "?"), threads)
    try:
        yield
        log.info("rule %s finished", getattr(smk, "rule", "?"))
    except BaseException:
        log.exception("rule %s failed", getattr(smk, "rule", "?"))
        raise
    finally:
        sys.stderr = old_stderr
        stream.flush()


def select_device(setting: str = "auto") -> str:
    """Return ``"cuda"`` or ``"cpu"`` for a config ``device`` setting (``auto`` prefers CUDA)."""
    import torch

    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config device='cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def named_paths(paths: Any) -> SimpleNamespace:
    """A Snakemake ``input``/``output`` as a namespace of its *named* entries only (lists stay lists of str)."""
    return SimpleNamespace(**{k: list(map(str, v)) if isinstance(v, list) else str(v) for k, v in paths.items()})


def run_stage(smk: Any, stage: Callable[..., Any]) -> None:
    """Run a stage function for the rule Snakemake is executing: ``stage(input, output, **params)``.

    The stage receives the rule's named inputs and outputs and exactly its declared ``params`` (never the config),
    inside :func:`rule_context`. Every script in ``scripts/`` is this one call.
    """
    with rule_context(smk):
        stage(named_paths(smk.input), named_paths(smk.output), **dict(smk.params.items()))
