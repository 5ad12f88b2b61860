"""The exceptions of :mod:`secagg`.

``SecAggError`` is the root. Following h11, errors split by whose fault they are:

* :class:`LocalProtocolError` - the caller misused an object (wrong call for the stage, a bad
  input vector). Nothing was changed; fix the call.
* :class:`RemoteProtocolError` - a peer sent bytes that are malformed, out of place or forged.
  Each carries ``sender`` (the claimed sender id, ``None`` if unknown). Unless documented
  otherwise the receiving object is unchanged and the message can be dropped.
* :class:`ThresholdNotMet` - too few clients are left for the round to finish safely.
* :class:`ConfigurationError` - parameters that cannot work, raised before anything starts.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "ConfigurationError",
    "DuplicateMessage",
    "InconsistentRequest",
    "InconsistentShares",
    "InvalidInput",
    "LocalProtocolError",
    "MalformedMessage",
    "ParameterMismatch",
    "RemoteProtocolError",
    "SecAggError",
    "ThresholdNotMet",
    "UnexpectedPhase",
    "UnknownSender",
    "UnsupportedVersion",
    "WrongSession",
]


class SecAggError(Exception):
    """Root of every error raised by :mod:`secagg`."""


class ConfigurationError(SecAggError, ValueError):
    """Protocol parameters that are invalid or unsafe; the message says how to fix them."""


class LocalProtocolError(SecAggError):
    """The caller used a protocol object in a way its current stage does not allow."""


class ThresholdNotMet(SecAggError):
    """Fewer than ``threshold`` clients remain where at least ``threshold`` are needed.

    The server raises it instead of releasing a sum of too few inputs, and a client raises it
    instead of continuing in a neighbourhood too small to protect it. The round is over.
    """


class RemoteProtocolError(SecAggError):
    """A peer sent a message that cannot be accepted.

    Attributes:
        sender: the id the message claimed to come from (0 for the server), or ``None``.
    """

    def __init__(self, message: str, *, sender: int | None = None) -> None:
        prefix = "" if sender is None else ("server: " if sender == 0 else f"client {sender}: ")
        super().__init__(prefix + message)
        self.sender = sender


class MalformedMessage(RemoteProtocolError):
    """Truncated, oversized, or otherwise not a valid encoding of a protocol message."""


class UnsupportedVersion(MalformedMessage):
    """The message was encoded with a protocol version this implementation does not speak."""


class WrongSession(RemoteProtocolError):
    """The message belongs to another session or round (stale, replayed or misrouted)."""


class ParameterMismatch(RemoteProtocolError):
    """The peer runs the same session with different protocol parameters."""


class UnknownSender(RemoteProtocolError):
    """The sender is not a participant of this round, or not one this party talks to."""


class UnexpectedPhase(RemoteProtocolError):
    """The message is legal in the protocol but not in the receiver's current stage."""


class DuplicateMessage(RemoteProtocolError):
    """A second message of the same kind from the same sender in one phase; the first stands."""


class AuthenticationFailed(RemoteProtocolError):
    """A signature or AEAD tag did not verify."""


class InconsistentRequest(RemoteProtocolError):
    """The server asked for something an honest server never asks for.

    Examples: both the self-mask share and the key share of one peer, a peer called dropped after
    it was declared alive, a second unmask request. The client stops for good (sticky error).
    """


class InconsistentShares(RemoteProtocolError):
    """Reconstructed secrets do not match their public key or commitment (a client lied)."""


class InvalidInput(LocalProtocolError, ValueError):
    """The caller's input vector does not fit the configuration (length, ring, declared bound)."""
