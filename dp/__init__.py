"""Differential privacy for federated learning: private local training and privacy accounting.

The package is being built up; it exports nothing yet.
"""

__all__: list[str] = []
