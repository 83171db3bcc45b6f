"""Run-time plumbing shared by the rule scripts: logging to the rule's log, threads, device choice, and the GPU
slot a job holds on a workstation that packs several jobs per GPU (``profiles/workstation``)."""

from __future__ import annotations

import contextlib
import fcntl
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
    slots = claim_gpu_slots(int(getattr(getattr(smk, "resources", None), "gpu", 0) or 0))
    if slots:
        log.info("GPU slots %s (CUDA_VISIBLE_DEVICES=%s)", [s.name for s in slots], os.environ["CUDA_VISIBLE_DEVICES"])
    try:
        yield
        log.info("rule %s finished", getattr(smk, "rule", "?"))
    except BaseException:
        log.exception("rule %s failed", getattr(smk, "rule", "?"))
        raise
    finally:
        sys.stderr = old_stderr
        stream.flush()


GPUS_ENV, JOBS_PER_GPU_ENV, LOCK_DIR_ENV = "DIFFATTR_GPUS", "DIFFATTR_JOBS_PER_GPU", "DIFFATTR_GPU_LOCKS"


def claim_gpu_slots(gpu: int, environ: dict[str, str] | None = None) -> list[Any]:
    """Pin this job to one GPU of a workstation shared by several jobs, by holding ``gpu`` of its slots.

    Active only when ``DIFFATTR_GPUS`` lists device ids (e.g. ``0,1``; set by ``profiles/workstation``'s README
    line) and ``CUDA_VISIBLE_DEVICES`` is not set already. Each GPU has ``DIFFATTR_JOBS_PER_GPU`` slots (default 1),
    one lock file each under ``DIFFATTR_GPU_LOCKS`` (default ``/tmp/diffattr-gpu-locks``); a job asking for
    ``gpu`` slots (its Snakemake resource; a whole GPU when ``gpu`` >= slots per GPU) locks that many free slots of
    the device with the most free slots, waiting for one if none has enough, and sets ``CUDA_VISIBLE_DEVICES`` to
    it. Snakemake's ``--resources gpu=<GPUs x slots>`` keeps the total in bounds; the locks (released when the
    process ends, however it ends) decide which device. Snakemake assigns no device ids itself.

    Returns:
        The open lock files (keep them referenced for the job's lifetime), or [] when not active.
    """
    env = os.environ if environ is None else environ
    devices = [d.strip() for d in env.get(GPUS_ENV, "").split(",") if d.strip()]
    if gpu <= 0 or not devices or "CUDA_VISIBLE_DEVICES" in env:
        return []
    per_gpu = max(1, int(env.get(JOBS_PER_GPU_ENV, "1")))
    need = min(gpu, per_gpu)
    root = env.get(LOCK_DIR_ENV, "/tmp/diffattr-gpu-locks")
    os.makedirs(root, exist_ok=True)
    while True:
        best: list[Any] = []
        best_dev = None
        for dev in devices:
            held = []
            for slot in range(per_gpu):
                f = open(os.path.join(root, f"gpu{dev}-slot{slot}.lock"), "w")  # noqa: SIM115 (held open)
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held.append(f)
                except BlockingIOError:
                    f.close()
            if len(held) > len(best):
                for f in best:
                    f.close()  # closing releases the lock
                best, best_dev = held, dev
            else:
                for f in held:
                    f.close()
            if len(best) >= need:
                break
        if len(best) >= need:
            for f in best[need:]:
                f.close()
            env["CUDA_VISIBLE_DEVICES"] = str(best_dev)
            return best[:need]
        for f in best:
            f.close()
        import time

        time.sleep(1.0)


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
