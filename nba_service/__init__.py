"""nba: a real-time next-best-action decision service."""

__all__ = ["__version__"]

__version__ = "0.1.0"
