"""Moved to :mod:`fl.engines.flower`; this name stays for existing Flower apps and configs."""

from fl.engines.flower import *  # noqa: F403
from fl.engines.flower import __all__ as __all__
