"""Gaussians, cameras and the one rasteriser (filled in by the render issue)."""
