"""bmteach: learn to recognise bone-marrow cells and look inside the network that does it."""

__version__ = "0.1.0"
