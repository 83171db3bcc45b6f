"""diffattr: training-data attribution for diffusion models.

Importing the package is cheap (no torch); heavy modules are imported where they are used.
"""

__version__ = "0.1.0"
