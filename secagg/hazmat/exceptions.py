"""The one exception type the hazmat layer adds to Python's own ``TypeError``/``ValueError``."""

__all__ = ["InvalidAuthentication"]


class InvalidAuthentication(Exception):
    """A tag or signature did not verify: the data was forged, corrupted or used out of context."""
