"""Query names: the one place a measurement (and its timestep) becomes a name, and a name is parsed back.

A *query* is one measurement function of the generated samples that scores are computed for and that the oracles
measure: ``loss``, ``elbo``, ``trajectory``, or the loss at one paper timestep t, named ``timestep_loss_t<t>``.
Score files are ``scores/{method}/{query}.h5``; LDS pairs and figures name targets the same way.
Torch-free (the Snakefile imports it at parse time).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TIMESTEP_LOSS = "timestep_loss"
_TIMESTEP_NAME = re.compile(rf"^{TIMESTEP_LOSS}_t(\d+)$")


@dataclass(frozen=True)
class Query:
    """A measurement, with its paper timestep for ``timestep_loss`` (None otherwise)."""

    measurement: str
    timestep: int | None = None

    @property
    def name(self) -> str:
        """``loss``, ``elbo``, ``trajectory`` or ``timestep_loss_t<t>``."""
        return self.measurement if self.timestep is None else f"{self.measurement}_t{self.timestep}"


def queries(measurements: Iterable[str], timesteps: Sequence[int]) -> list[Query]:
    """The queries of configured measurements: ``timestep_loss`` expands to one query per timestep, in order."""
    out: list[Query] = []
    for m in measurements:
        out += [Query(m, int(t)) for t in timesteps] if m == TIMESTEP_LOSS else [Query(m)]
    return out


def query_names(measurements: Iterable[str], timesteps: Sequence[int]) -> list[str]:
    """Names of :func:`queries` (score-file stems, LDS targets)."""
    return [q.name for q in queries(measurements, timesteps)]


def parse_query(name: str) -> Query:
    """Inverse of :attr:`Query.name`: ``timestep_loss_t50`` -> ``Query("timestep_loss", 50)``."""
    m = _TIMESTEP_NAME.match(name)
    return Query(TIMESTEP_LOSS, int(m.group(1))) if m else Query(name)
