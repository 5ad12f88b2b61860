"""Messages of multi-step sessions: frozen, self-validating, versioned canonical binary.

Wire format (integers big-endian)::

    envelope = magic "PAGS" | version u8 | kind u8 | session_id 32B | step u32 | sender u32
               | body_len u32 | body

``session_id`` is the session's 32-byte id (for a key advertisement: the id agreed before the
keys), ``step`` the step index (0 for session-level messages) and ``sender`` the member id (0: a
coordinator speaking for no member). Every message of a step also carries its attempt, so a
message is bound to session, step, attempt and sender. Decoding checks the magic, version, kind,
every length and range, and raises :class:`~secagg.errors.MalformedMessage` (or
:class:`~secagg.errors.UnsupportedVersion`) and nothing else. Never pickle.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from secagg.config import SESSION_ID_BYTES
from secagg.errors import MalformedMessage, UnsupportedVersion
from secagg.hazmat import aead, shamir
from secagg.hazmat.agreement import KEY_BYTES
from secagg.messages import (
    _check_ids,
    _check_len,
    _check_pairs,
    _check_shares,
    _pack_ids,
    _pack_pairs,
    _read_pairs,
    _Reader,
)
from secagg.multistep.config import PARAMETERS_BYTES

__all__ = [
    "MULTISTEP_VERSION",
    "SHARE_CIPHERTEXT_BYTES",
    "Decision",
    "KeyAdvert",
    "MultiStepEnvelope",
    "MultiStepKind",
    "Outcome",
    "SeedReveal",
    "ShareOffer",
    "ShareReveal",
    "Status",
    "StatusCode",
    "decode",
    "encode",
]

MULTISTEP_VERSION = 1
SHARE_CIPHERTEXT_BYTES = shamir.SHARE_BYTES + aead.FRAMED_OVERHEAD
COMMITMENT_BYTES = 32
SEED_BYTES = 32
_MAGIC = b"PAGS"
_HEADER = struct.Struct(">4sBB32sIII")
_MAX_BODY = 1 << 24  # the largest message is a share offer: ~72 bytes per contributor


class MultiStepKind(IntEnum):
    """Wire tag of each message kind."""

    KEY_ADVERT = 1
    SHARE_OFFER = 2
    STATUS = 3
    DECISION = 4
    SEED_REVEAL = 5
    SHARE_REVEAL = 6


class StatusCode(IntEnum):
    """What a contributor reports after the transport summed the masked vectors."""

    COMPLETE = 1
    FAILED = 2


class Outcome(IntEnum):
    """What the members do next with a step (one decision per step and attempt).

    * ``REVEAL``: every contributor's masked vector is in the sum; each reveals its self-mask seed.
    * ``RETRY``: the sum is incomplete; nothing is revealed, the attempt is abandoned and the
      listed survivors sum again under fresh masks (a new attempt, or a new session).
    * ``RECOVER``: after ``REVEAL``, the listed contributors' seeds did not arrive; the others
      reveal their shares of those seeds.
    """

    REVEAL = 1
    RETRY = 2
    RECOVER = 3


@dataclass(frozen=True)
class KeyAdvert:
    """A member's X25519 public key for the session, with the parameters it runs with."""

    KIND: ClassVar[MultiStepKind] = MultiStepKind.KEY_ADVERT
    agreement_key: bytes
    ring_bits: int
    corrupt_fraction: float
    parameters: bytes

    def __post_init__(self) -> None:
        _check_len(self.agreement_key, KEY_BYTES, "agreement_key")
        _check_len(self.parameters, PARAMETERS_BYTES, "parameters")
        if self.ring_bits not in (32, 64):
            raise ValueError(f"ring_bits must be 32 or 64, got {self.ring_bits}")
        if not 0.0 <= self.corrupt_fraction < 0.5:
            raise ValueError(f"corrupt_fraction must lie in [0, 0.5), got {self.corrupt_fraction}")

    def encode(self) -> bytes:
        return (
            self.agreement_key
            + bytes([self.ring_bits])
            + struct.pack(">d", self.corrupt_fraction)
            + self.parameters
        )

    @classmethod
    def decode(cls, reader: _Reader) -> KeyAdvert:
        key = reader.take(KEY_BYTES, "agreement key")
        ring_bits = reader.u8("ring bits")
        (fraction,) = struct.unpack(">d", reader.take(8, "corrupt fraction"))
        return cls(key, ring_bits, fraction, reader.take(PARAMETERS_BYTES, "parameters"))


@dataclass(frozen=True)
class ShareOffer:
    """A contributor's commitment to its step's self-mask seed b, and b's Shamir shares, one
    AES-GCM ciphertext per other contributor. Sent before the masked vector leaves the member."""

    KIND: ClassVar[MultiStepKind] = MultiStepKind.SHARE_OFFER
    attempt: int
    length: int
    contributors: tuple[int, ...]
    commitment: bytes
    ciphertexts: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        if not 0 <= self.attempt <= 255 or not 1 <= self.length < 2**40:
            raise ValueError("attempt or length out of range")
        _check_ids(self.contributors, "contributors")
        _check_len(self.commitment, COMMITMENT_BYTES, "commitment")
        _check_pairs(self.ciphertexts, SHARE_CIPHERTEXT_BYTES, "ciphertexts")

    def encode(self) -> bytes:
        return (
            struct.pack(">BQ", self.attempt, self.length)
            + _pack_ids(self.contributors)
            + self.commitment
            + _pack_pairs(self.ciphertexts)
        )

    @classmethod
    def decode(cls, reader: _Reader) -> ShareOffer:
        attempt, length = struct.unpack(">BQ", reader.take(9, "attempt and length"))
        contributors = reader.ids("contributors")
        commitment = reader.take(COMMITMENT_BYTES, "commitment")
        ciphertexts = _read_pairs(reader, SHARE_CIPHERTEXT_BYTES, "ciphertexts")
        return cls(attempt, length, contributors, commitment, ciphertexts)


@dataclass(frozen=True)
class Status:
    """A contributor's report on the transport's sum: complete (it holds the whole sum) or not."""

    KIND: ClassVar[MultiStepKind] = MultiStepKind.STATUS
    attempt: int
    code: StatusCode

    def __post_init__(self) -> None:
        if not 0 <= self.attempt <= 255:
            raise ValueError("attempt out of range")
        object.__setattr__(self, "code", StatusCode(self.code))

    def encode(self) -> bytes:
        return bytes([self.attempt, self.code])

    @classmethod
    def decode(cls, reader: _Reader) -> Status:
        attempt, code = reader.u8("attempt"), reader.u8("status code")
        return cls(attempt, StatusCode(code))


@dataclass(frozen=True)
class Decision:
    """The one decision about a step's attempt (:class:`Outcome`), with the ids it names:
    the survivors for ``RETRY``, the contributors whose seeds are missing for ``RECOVER``."""

    KIND: ClassVar[MultiStepKind] = MultiStepKind.DECISION
    attempt: int
    outcome: Outcome
    ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.attempt <= 255:
            raise ValueError("attempt out of range")
        object.__setattr__(self, "outcome", Outcome(self.outcome))
        _check_ids(self.ids, "decision ids")
        if self.outcome is Outcome.REVEAL and self.ids:
            raise ValueError("a REVEAL decision names no ids")

    def encode(self) -> bytes:
        return bytes([self.attempt, self.outcome]) + _pack_ids(self.ids)

    @classmethod
    def decode(cls, reader: _Reader) -> Decision:
        attempt, outcome = reader.u8("attempt"), reader.u8("outcome")
        return cls(attempt, Outcome(outcome), reader.ids("decision ids"))


@dataclass(frozen=True)
class SeedReveal:
    """A contributor's own self-mask seed b for a step (only after a ``REVEAL`` decision)."""

    KIND: ClassVar[MultiStepKind] = MultiStepKind.SEED_REVEAL
    attempt: int
    seed: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.attempt <= 255:
            raise ValueError("attempt out of range")
        _check_len(self.seed, SEED_BYTES, "seed")

    def encode(self) -> bytes:
        return bytes([self.attempt]) + self.seed

    @classmethod
    def decode(cls, reader: _Reader) -> SeedReveal:
        return cls(reader.u8("attempt"), reader.take(SEED_BYTES, "seed"))


@dataclass(frozen=True)
class ShareReveal:
    """A holder's shares of the missing contributors' seeds, by owner (``RECOVER``)."""

    KIND: ClassVar[MultiStepKind] = MultiStepKind.SHARE_REVEAL
    attempt: int
    shares: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        if not 0 <= self.attempt <= 255:
            raise ValueError("attempt out of range")
        _check_ids([owner for owner, _ in self.shares], "share owners")
        _check_shares([share for _, share in self.shares], "shares")

    def encode(self) -> bytes:
        return bytes([self.attempt]) + _pack_pairs(self.shares)

    @classmethod
    def decode(cls, reader: _Reader) -> ShareReveal:
        attempt = reader.u8("attempt")
        return cls(attempt, _read_pairs(reader, shamir.SHARE_BYTES, "shares"))


Payload = KeyAdvert | ShareOffer | Status | Decision | SeedReveal | ShareReveal
_PAYLOADS: dict[MultiStepKind, type] = {
    cls.KIND: cls for cls in (KeyAdvert, ShareOffer, Status, Decision, SeedReveal, ShareReveal)
}


@dataclass(frozen=True)
class MultiStepEnvelope:
    """A decoded message with its routing header."""

    kind: MultiStepKind
    session_id: bytes
    step: int
    sender: int
    payload: Payload


def encode(payload: Payload, *, session_id: bytes, step: int, sender: int) -> bytes:
    """Frame ``payload`` for ``session_id``, ``step`` and ``sender``."""
    if not isinstance(session_id, bytes) or len(session_id) != SESSION_ID_BYTES:
        raise ValueError(f"session_id must be {SESSION_ID_BYTES} bytes")
    body = payload.encode()
    header = _HEADER.pack(
        _MAGIC, MULTISTEP_VERSION, payload.KIND, session_id, step, sender, len(body)
    )
    return header + body


def decode(data: bytes, *, expect: MultiStepKind | None = None) -> MultiStepEnvelope:
    """Parse and validate one framed message.

    Args:
        data: the bytes received.
        expect: if given, any other kind is refused.

    Raises:
        MalformedMessage: wrong magic, unknown or unexpected kind, bad lengths, invalid fields.
        UnsupportedVersion: another protocol version.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedMessage(f"message must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise MalformedMessage(f"message of {len(data)} bytes is shorter than the header")
    magic, version, kind, session_id, step, sender, body_len = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise MalformedMessage("not a privagg multi-step message (bad magic)")
    if version != MULTISTEP_VERSION:
        raise UnsupportedVersion(
            f"message uses multi-step version {version}; this side speaks {MULTISTEP_VERSION}; "
            "install the same privagg version on every rank",
            sender=sender,
        )
    try:
        message_kind = MultiStepKind(kind)
    except ValueError:
        raise MalformedMessage(f"unknown message kind {kind}", sender=sender) from None
    if expect is not None and message_kind is not expect:
        raise MalformedMessage(
            f"expected a {expect.name} message, got {message_kind.name}", sender=sender
        )
    if body_len > _MAX_BODY or len(data) != _HEADER.size + body_len:
        raise MalformedMessage(
            f"{message_kind.name} frame is {len(data)} bytes, header says "
            f"{_HEADER.size + body_len}",
            sender=sender,
        )
    reader = _Reader(memoryview(data)[_HEADER.size :])
    try:
        payload = _PAYLOADS[message_kind].decode(reader)
        reader.finish()
    except (ValueError, struct.error) as error:
        raise MalformedMessage(f"invalid {message_kind.name}: {error}", sender=sender) from None
    return MultiStepEnvelope(message_kind, session_id, step, sender, payload)
