"""The exceptions of :mod:`dp`."""

from __future__ import annotations

__all__ = ["DPError", "PrivacyConfigError", "UnsupportedEvent"]


class DPError(Exception):
    """Root of every error raised by :mod:`dp`."""


class PrivacyConfigError(DPError, ValueError):
    """Privacy parameters that are invalid or cannot be met; the message says how to fix them."""


class UnsupportedEvent(DPError, TypeError):
    """An accountant was given a mechanism it cannot account for."""
