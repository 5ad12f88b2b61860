"""The exceptions of :mod:`fl`: one root, and a configuration error that names key, value and fix."""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "FLError"]


class FLError(Exception):
    """Root of every error raised by :mod:`fl`."""


class ConfigError(FLError, ValueError):
    """An invalid configuration value, raised before round 1.

    Attributes:
        key: the dotted configuration key, e.g. ``training.rounds``.
    """

    def __init__(self, key: str, value: object, allowed: str) -> None:
        super().__init__(f"{key} = {value!r} is invalid: {allowed}")
        self.key = key
        self.value = value


class DataError(FLError):
    """A data set that cannot be used: missing file, wrong arrays, shapes that do not fit."""
