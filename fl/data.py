"""Moved to :mod:`fl.core.data`; this name stays for existing code."""

from fl.core.data import *  # noqa: F403
from fl.core.data import __all__ as __all__
