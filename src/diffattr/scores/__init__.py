"""Attribution scores: K-FAC influence (and, sharing their format, the baselines)."""

from diffattr.scores.influence import QueryBank, influence_scores
from diffattr.scores.io import read_scores, target_sign, write_scores

__all__ = ["QueryBank", "influence_scores", "read_scores", "target_sign", "write_scores"]
