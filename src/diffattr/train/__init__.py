"""DDPM training with EMA, cosine LR schedule, atomic checkpoints and exact resume."""

from diffattr.train.loop import ModelSpec, TrainingDiverged, model_spec, train

__all__ = ["ModelSpec", "TrainingDiverged", "model_spec", "train"]
