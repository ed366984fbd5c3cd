"""The tool's version (stored with every run)."""

__version__ = "0.1.0"
