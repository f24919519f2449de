"""Network definitions."""
from .jdnet import ATTENTION_OPS, JDNet

__all__ = ["JDNet", "ATTENTION_OPS"]
