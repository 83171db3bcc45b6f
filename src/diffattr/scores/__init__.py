"""Attribution scores: the one score format, the query bank, and every method behind the scoring seam
(:mod:`diffattr.scores.base`; the list of methods is :mod:`diffattr.scores.registry`)."""

from diffattr.scores.bank import QueryBank
from diffattr.scores.influence import influence_scores
from diffattr.scores.io import damping_index, read_scores, target_sign, write_scores

__all__ = ["QueryBank", "damping_index", "influence_scores", "read_scores", "target_sign", "write_scores"]
