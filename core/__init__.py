"""Softlabel's core: settings, models, services and the ML library."""

# The one version string: pyproject.toml says the same (tests/test_structure.py checks it).
__version__ = "0.1.0"
