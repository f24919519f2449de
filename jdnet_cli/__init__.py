"""jdnet: batch deraining with JDNet."""
__version__ = "0.1.0"
