"""The exceptions of :mod:`secagg`.

``SecAggError`` is the root. Following h11, errors split by whose fault they are:

* :class:`LocalProtocolError` - the caller misused an object (wrong call for the stage, a bad
  input vector). Nothing was changed; fix the call.
* :class:`RemoteProtocolError` - a peer sent bytes that are malformed, out of place or forged.
  Each carries ``sender`` (the claimed sender id, ``None`` if unknown). Unless documented
  otherwise the receiving object is unchanged and the message can be dropped.
* :class:`ThresholdNotMet` - too few clients are left for the round to finish safely.
* :class:`ConfigurationError` - parameters that cannot work, raised before anything starts.

Only an :class:`ErrorCode` ever leaves a client (:func:`error_code`): an error's text can hold
values derived from the client's data, so it stays in the client's local log.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "AuthenticationFailed",
    "ConfigurationError",
    "DuplicateMessage",
    "ErrorCode",
    "InconsistentRequest",
    "InconsistentShares",
    "InvalidInput",
    "LocalProtocolError",
    "MalformedMessage",
    "ParameterMismatch",
    "PolicyViolation",
    "RemoteProtocolError",
    "ReplayedSession",
    "SecAggError",
    "ThresholdNotMet",
    "UnexpectedPhase",
    "UnknownSender",
    "UnsupportedVersion",
    "WrongSession",
    "error_code",
]


class ErrorCode(IntEnum):
    """The fixed codes a client may report to the server instead of an error's text."""

    INTERNAL = 1
    CONFIGURATION = 2
    LOCAL_PROTOCOL = 3
    INVALID_INPUT = 4
    THRESHOLD_NOT_MET = 5
    MALFORMED_MESSAGE = 6
    UNSUPPORTED_VERSION = 7
    WRONG_SESSION = 8
    PARAMETER_MISMATCH = 9
    UNKNOWN_SENDER = 10
    UNEXPECTED_PHASE = 11
    DUPLICATE_MESSAGE = 12
    AUTHENTICATION_FAILED = 13
    INCONSISTENT_REQUEST = 14
    INCONSISTENT_SHARES = 15
    POLICY_VIOLATION = 16
    REPLAYED_SESSION = 17
    TRAINING_FAILED = 18
    DROPPED_OUT = 19


class SecAggError(Exception):
    """Root of every error raised by :mod:`secagg`.

    Attributes:
        code: the fixed :class:`ErrorCode` reported in place of the text.
    """

    code = ErrorCode.INTERNAL


class ConfigurationError(SecAggError, ValueError):
    """Protocol parameters that are invalid or unsafe; the message says how to fix them."""

    code = ErrorCode.CONFIGURATION


class LocalProtocolError(SecAggError):
    """The caller used a protocol object in a way its current stage does not allow."""

    code = ErrorCode.LOCAL_PROTOCOL


class ThresholdNotMet(SecAggError):
    """Fewer than ``threshold`` clients remain where at least ``threshold`` are needed.

    The server raises it instead of releasing a sum of too few inputs, and a client raises it
    instead of continuing in a neighbourhood too small to protect it. The round is over.

    Attributes:
        bytes_up, bytes_down: what the round's clients sent and received before it ended, when
            the raiser measured it (:func:`secagg.aggregate` does), else None.
    """

    code = ErrorCode.THRESHOLD_NOT_MET
    bytes_up: int | None = None
    bytes_down: int | None = None


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

    code = ErrorCode.MALFORMED_MESSAGE


class UnsupportedVersion(MalformedMessage):
    """The message was encoded with a protocol version this implementation does not speak."""

    code = ErrorCode.UNSUPPORTED_VERSION


class WrongSession(RemoteProtocolError):
    """The message belongs to another session or round (stale, replayed or misrouted)."""

    code = ErrorCode.WRONG_SESSION


class ParameterMismatch(RemoteProtocolError):
    """The peer runs the same session with different protocol parameters."""

    code = ErrorCode.PARAMETER_MISMATCH


class UnknownSender(RemoteProtocolError):
    """The sender is not a participant of this round, or not one this party talks to."""

    code = ErrorCode.UNKNOWN_SENDER


class UnexpectedPhase(RemoteProtocolError):
    """The message is legal in the protocol but not in the receiver's current stage."""

    code = ErrorCode.UNEXPECTED_PHASE


class DuplicateMessage(RemoteProtocolError):
    """A second message of the same kind from the same sender in one phase; the first stands."""

    code = ErrorCode.DUPLICATE_MESSAGE


class AuthenticationFailed(RemoteProtocolError):
    """A signature or AEAD tag did not verify."""

    code = ErrorCode.AUTHENTICATION_FAILED


class InconsistentRequest(RemoteProtocolError):
    """The server asked for something an honest server never asks for.

    Examples: both the self-mask share and the key share of one peer, a peer called dropped after
    it was declared alive, a second unmask request. The client stops for good (sticky error).
    """

    code = ErrorCode.INCONSISTENT_REQUEST


class InconsistentShares(RemoteProtocolError):
    """Reconstructed secrets do not match their public key or commitment (a client lied)."""

    code = ErrorCode.INCONSISTENT_SHARES


class InvalidInput(LocalProtocolError, ValueError):
    """The caller's input vector does not fit the configuration (length, ring, declared bound)."""

    code = ErrorCode.INVALID_INPUT


class PolicyViolation(RemoteProtocolError):
    """The server proposed parameters below this client's policy (:mod:`secagg.policy`).

    The client refuses the session and stops (sticky).
    """

    code = ErrorCode.POLICY_VIOLATION


class ReplayedSession(RemoteProtocolError):
    """The server asked a client to join a session, or a round, it has already joined.

    Running one session twice (with and without a client) and subtracting the sums would reveal
    that client's input, so a client joins each session once and rounds only move forward.
    """

    code = ErrorCode.REPLAYED_SESSION


def error_code(error: BaseException) -> ErrorCode:
    """The code that may be reported for ``error`` (``INTERNAL`` for anything unexpected)."""
    return error.code if isinstance(error, SecAggError) else ErrorCode.INTERNAL
