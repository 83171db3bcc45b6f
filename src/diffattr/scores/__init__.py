"""Attribution scores: the one score format, the query bank, and every method behind the scoring seam
(:mod:`diffattr.scores.base`; the list of methods is :mod:`diffattr.scores.registry`).

The package imports lazily: the Snakefile imports :mod:`diffattr.scores.registry` at parse time, which must not
pull in torch.
"""

from importlib import import_module

_EXPORTS = {"QueryBank": "bank", "influence_scores": "influence", "damping_index": "io", "read_scores": "io",
            "target_sign": "io", "write_scores": "io"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"diffattr.scores.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'diffattr.scores' has no attribute {name!r}")
