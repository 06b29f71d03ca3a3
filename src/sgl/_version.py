"""The package version (a leaf, so any layer can report it)."""

__version__ = "0.1.0"
