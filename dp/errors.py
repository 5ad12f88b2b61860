"""The exceptions of :mod:`dp`."""

from __future__ import annotations

__all__ = ["DPError", "PrivacyConfigError", "PrivacyWarning", "UnsupportedEvent"]


class DPError(Exception):
    """Root of every error raised by :mod:`dp`."""


class PrivacyConfigError(DPError, ValueError):
    """Privacy parameters that are invalid or cannot be met; the message says how to fix them."""


class UnsupportedEvent(DPError, TypeError):
    """An accountant was given a mechanism it cannot account for."""


class PrivacyWarning(UserWarning):
    """A privacy setting that works but is unlikely to give what the user wants (e.g. noise
    larger than the signal); the message gives the numbers and the fix."""
