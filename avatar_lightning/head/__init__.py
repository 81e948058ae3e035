"""FLAME-format morphable model, built-in head, UV toolkit, posing Gaussians."""
