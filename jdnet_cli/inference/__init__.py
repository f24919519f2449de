"""Inference: the Derainer and what it owns (tiling, memory budget, devices, weights)."""
from .derainer import Derainer

__all__ = ["Derainer"]
