"""Low-level cryptographic primitives: the only modules of the project that import ``cryptography``.

Each module wraps one primitive with the exact parameters the protocol uses. They follow the
conventions of ``cryptography`` itself: a wrong type raises :class:`TypeError`, a wrong length or
range raises :class:`ValueError`, and a failed authentication always raises
:class:`InvalidAuthentication` (never returns ``False``).

Protocol code should use :mod:`secagg` instead; these functions are safe only when called with the
domain separation and key-use discipline that the protocol layer provides.
"""

from secagg.hazmat.exceptions import InvalidAuthentication

__all__ = ["InvalidAuthentication"]
