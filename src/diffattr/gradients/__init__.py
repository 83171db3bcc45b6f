"""Per-example gradients (training loss, D-TRAK output, measurements) and their int8 compression."""

from diffattr.gradients.compress import dequantize_int8, quantize_int8
from diffattr.gradients.per_example import measurement_gradients, training_gradients

__all__ = ["dequantize_int8", "measurement_gradients", "quantize_int8", "training_gradients"]
