"""Figures (matplotlib) and image grids."""

from diffattr.plots.grids import save_image_grid

__all__ = ["save_image_grid"]
