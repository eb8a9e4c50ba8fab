"""The version of the package (one place, imported by every layer that reports it)."""

__version__ = "0.1.0"
