"""Protocol messages: frozen, self-validating classes with a versioned canonical binary encoding.

Wire format (all integers big-endian, except ring words which are little-endian)::

    envelope = magic "PAGM" | version u8 | kind u8 | session_id 32B | round u32 | sender u32
               | auth u8 (0 none, 1 Ed25519) | body_len u32 | body | signature (64B if auth)

Sender 0 is the server. Id lists are strictly increasing (so each set has one encoding) and every
length is checked before anything is built. Decoding raises :class:`MalformedMessage` (or
:class:`UnsupportedVersion`) and nothing else. Never pickle.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np

from secagg.config import PROTOCOL_VERSION, SecAggConfig
from secagg.errors import MalformedMessage, UnsupportedVersion
from secagg.hazmat import aead, shamir
from secagg.hazmat.agreement import KEY_BYTES
from secagg.hazmat.prg import SEED_BYTES
from secagg.hazmat.signing import SIGNATURE_BYTES, SigningKey
from secagg.instance import path_length
from secagg.stages import MessageType

__all__ = [
    "CIPHERTEXT_BYTES",
    "SERVER_ID",
    "AdvertiseKeys",
    "ConsistencyRequest",
    "ConsistencySignature",
    "Envelope",
    "KeyRoster",
    "MaskedInput",
    "NoiseRemovalRequest",
    "NoiseRemovalResponse",
    "Payload",
    "RosterEntry",
    "ShareBundle",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskResponse",
    "decode",
    "encode",
    "size_limit",
]

SERVER_ID = 0
CIPHERTEXT_BYTES = 2 * shamir.SHARE_BYTES + aead.FRAMED_OVERHEAD
DIGEST_BYTES = 32
_MAX_PATH = 32  # a cohort has at most 2^31 ids, so its Merkle path has at most 31 hashes
_MAGIC = b"PAGM"
_HEADER = struct.Struct(">4sBB32sIIBI")
_U32 = struct.Struct(">I")


class _Reader:
    """Cursor over a body; every read checks the remaining length."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._offset = 0

    def take(self, size: int, what: str) -> bytes:
        end = self._offset + size
        if size < 0 or end > len(self._data):
            raise ValueError(f"truncated {what}: need {size} bytes, {self.remaining} left")
        chunk = bytes(self._data[self._offset : end])
        self._offset = end
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u32(self, what: str) -> int:
        return _U32.unpack(self.take(4, what))[0]

    def count(self, entry_bytes: int, what: str) -> int:
        count = self.u32(what)
        if count * entry_bytes > self.remaining:
            raise ValueError(
                f"{what} declares {count} entries but only {self.remaining} bytes follow"
            )
        return count

    def ids(self, what: str) -> tuple[int, ...]:
        count = self.count(4, what)
        return struct.unpack(f">{count}I", self.take(4 * count, what))

    @property
    def remaining(self) -> int:
        return len(self._data) - self._offset

    def finish(self) -> None:
        if self.remaining:
            raise ValueError(f"{self.remaining} unexpected trailing bytes")


def _check_ids(ids: Sequence[int], what: str) -> None:
    if any(not 0 < i < 2**32 for i in ids):
        raise ValueError(f"{what} holds an id outside [1, 2^32)")
    if any(a >= b for a, b in itertools.pairwise(ids)):
        raise ValueError(f"{what} must be strictly increasing (sorted, no duplicates)")


def _check_len(value: bytes, size: int | tuple[int, ...], what: str) -> None:
    sizes = size if isinstance(size, tuple) else (size,)
    if not isinstance(value, bytes) or len(value) not in sizes:
        raise ValueError(f"{what} must be {' or '.join(map(str, sizes))} bytes")


def _check_shares(shares: Sequence[bytes], what: str) -> None:
    if any(type(share) is not bytes or len(share) != shamir.SHARE_BYTES for share in shares):
        raise ValueError(f"{what} must be {shamir.SHARE_BYTES} bytes each")
    if shares and np.any(np.frombuffer(b"".join(shares), dtype="<u4") >= shamir.PRIME):
        raise ValueError(f"{what} holds a value outside the Shamir field")


def _pack_ids(ids: Sequence[int]) -> bytes:
    return struct.pack(f">I{len(ids)}I", len(ids), *ids)


def _pack_pairs(pairs: Sequence[tuple[int, bytes]]) -> bytes:
    return _U32.pack(len(pairs)) + b"".join(_U32.pack(i) + blob for i, blob in pairs)


def _read_pairs(reader: _Reader, size: int, what: str) -> tuple[tuple[int, bytes], ...]:
    count = reader.count(4 + size, what)
    block = reader.take(count * (4 + size), what)
    step = 4 + size
    return tuple(
        (int.from_bytes(block[i : i + 4], "big"), block[i + 4 : i + step])
        for i in range(0, len(block), step)
    )


def _check_pairs(pairs: Sequence[tuple[int, bytes]], size: int, what: str) -> None:
    _check_ids([i for i, _ in pairs], what)
    if any(type(blob) is not bytes or len(blob) != size for _, blob in pairs):
        raise ValueError(f"{what} entries must be {size} bytes each")


@dataclass(frozen=True)
class AdvertiseKeys:
    """Phase 0, client -> server: the two fresh X25519 public keys of this session."""

    KIND: ClassVar[MessageType] = MessageType.ADVERTISE_KEYS
    config_digest: bytes
    channel_key: bytes
    mask_key: bytes
    key_signature: bytes = b""

    def __post_init__(self) -> None:
        _check_len(self.config_digest, DIGEST_BYTES, "config_digest")
        _check_len(self.channel_key, KEY_BYTES, "channel_key")
        _check_len(self.mask_key, KEY_BYTES, "mask_key")
        _check_len(self.key_signature, (0, SIGNATURE_BYTES), "key_signature")

    def encode(self) -> bytes:
        return (
            self.config_digest
            + self.channel_key
            + self.mask_key
            + bytes([len(self.key_signature)])
            + self.key_signature
        )

    @classmethod
    def decode(cls, reader: _Reader) -> AdvertiseKeys:
        digest = reader.take(DIGEST_BYTES, "config digest")
        channel, mask = reader.take(KEY_BYTES, "channel key"), reader.take(KEY_BYTES, "mask key")
        return cls(digest, channel, mask, reader.take(reader.u8("signature length"), "signature"))


@dataclass(frozen=True)
class RosterEntry:
    """One neighbour's advertised keys, as forwarded by the server."""

    client_id: int
    channel_key: bytes
    mask_key: bytes
    key_signature: bytes = b""

    def __post_init__(self) -> None:
        _check_ids([self.client_id], "roster id")
        _check_len(self.channel_key, KEY_BYTES, "channel_key")
        _check_len(self.mask_key, KEY_BYTES, "mask_key")
        _check_len(self.key_signature, (0, SIGNATURE_BYTES), "key_signature")

    @cached_property
    def encoded(self) -> bytes:
        """Wire form; cached because the server sends one entry to each of k neighbours."""
        return (
            _U32.pack(self.client_id)
            + self.channel_key
            + self.mask_key
            + bytes([len(self.key_signature)])
            + self.key_signature
        )


@dataclass(frozen=True)
class KeyRoster:
    """Phase 0 reply, server -> client: the keys of the client's neighbours that advertised.

    ``instance_root`` commits to every admitted client's keys (:mod:`secagg.instance`);
    ``instance_path`` proves the recipient's own leaf under it.
    """

    KIND: ClassVar[MessageType] = MessageType.KEY_ROSTER
    entries: tuple[RosterEntry, ...]
    instance_root: bytes = bytes(DIGEST_BYTES)
    instance_path: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        _check_ids([e.client_id for e in self.entries], "roster")
        _check_len(self.instance_root, DIGEST_BYTES, "instance_root")
        if len(self.instance_path) > _MAX_PATH:
            raise ValueError(f"instance_path holds more than {_MAX_PATH} hashes")
        for node in self.instance_path:
            _check_len(node, DIGEST_BYTES, "instance_path entry")

    def encode(self) -> bytes:
        return (
            self.instance_root
            + bytes([len(self.instance_path)])
            + b"".join(self.instance_path)
            + _U32.pack(len(self.entries))
            + b"".join(e.encoded for e in self.entries)
        )

    @classmethod
    def decode(cls, reader: _Reader) -> KeyRoster:
        root = reader.take(DIGEST_BYTES, "instance root")
        depth = reader.u8("instance path length")
        path = tuple(reader.take(DIGEST_BYTES, "instance path") for _ in range(depth))
        count = reader.count(4 + 2 * KEY_BYTES + 1, "roster")
        entries = []
        for _ in range(count):
            client_id = reader.u32("roster id")
            channel, mask = (
                reader.take(KEY_BYTES, "channel key"),
                reader.take(KEY_BYTES, "mask key"),
            )
            signature = reader.take(reader.u8("signature length"), "signature")
            entries.append(RosterEntry(client_id, channel, mask, signature))
        return cls(tuple(entries), root, path)


@dataclass(frozen=True)
class ShareKeys:
    """Phase 1, client -> server: encrypted shares for each neighbour, and a commitment to b."""

    KIND: ClassVar[MessageType] = MessageType.SHARE_KEYS
    commitment: bytes
    ciphertexts: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        _check_len(self.commitment, DIGEST_BYTES, "commitment")
        _check_pairs(self.ciphertexts, CIPHERTEXT_BYTES, "ciphertexts")

    def encode(self) -> bytes:
        return self.commitment + _pack_pairs(self.ciphertexts)

    @classmethod
    def decode(cls, reader: _Reader) -> ShareKeys:
        commitment = reader.take(DIGEST_BYTES, "commitment")
        return cls(commitment, _read_pairs(reader, CIPHERTEXT_BYTES, "ciphertexts"))


@dataclass(frozen=True)
class ShareBundle:
    """Phase 1 reply, server -> client: the ciphertexts addressed to the client, by sender."""

    KIND: ClassVar[MessageType] = MessageType.SHARE_BUNDLE
    ciphertexts: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        _check_pairs(self.ciphertexts, CIPHERTEXT_BYTES, "ciphertexts")

    def encode(self) -> bytes:
        return _pack_pairs(self.ciphertexts)

    @classmethod
    def decode(cls, reader: _Reader) -> ShareBundle:
        return cls(_read_pairs(reader, CIPHERTEXT_BYTES, "ciphertexts"))


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Phase 2, client -> server: the masked vector y, as little-endian ring words."""

    KIND: ClassVar[MessageType] = MessageType.MASKED_INPUT
    word_bytes: int
    data: bytes

    def __post_init__(self) -> None:
        if self.word_bytes not in (4, 8):
            raise ValueError("word_bytes must be 4 or 8")
        if not isinstance(self.data, bytes) or len(self.data) % self.word_bytes:
            raise ValueError("masked vector length is not a whole number of words")

    @classmethod
    def from_vector(cls, vector: np.ndarray) -> MaskedInput:
        word = vector.dtype.newbyteorder("<")
        return cls(word.itemsize, vector.astype(word, copy=False).tobytes())

    def vector(self) -> np.ndarray:
        """The words as a read-only numpy array (no copy)."""
        return np.frombuffer(self.data, dtype=f"<u{self.word_bytes}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MaskedInput) and (self.word_bytes, self.data) == (
            other.word_bytes,
            other.data,
        )

    __hash__ = None  # type: ignore[assignment]

    def encode(self) -> bytes:
        return bytes([self.word_bytes]) + _U32.pack(len(self.data) // self.word_bytes) + self.data

    @classmethod
    def decode(cls, reader: _Reader) -> MaskedInput:
        word_bytes = reader.u8("word size")
        if word_bytes not in (4, 8):
            raise ValueError(f"word size must be 4 or 8, got {word_bytes}")
        count = reader.count(word_bytes, "masked vector")
        return cls(word_bytes, reader.take(count * word_bytes, "masked vector"))


@dataclass(frozen=True)
class ConsistencyRequest:
    """Phase 3, server -> client: the set U3 of clients whose masked input arrived."""

    KIND: ClassVar[MessageType] = MessageType.CONSISTENCY_REQUEST
    survivors: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_ids(self.survivors, "survivors")

    def encode(self) -> bytes:
        return _pack_ids(self.survivors)

    @classmethod
    def decode(cls, reader: _Reader) -> ConsistencyRequest:
        return cls(reader.ids("survivors"))


@dataclass(frozen=True)
class ConsistencySignature:
    """Phase 3, client -> server: the client's signature over the session and U3."""

    KIND: ClassVar[MessageType] = MessageType.CONSISTENCY_SIGNATURE
    signature: bytes

    def __post_init__(self) -> None:
        _check_len(self.signature, SIGNATURE_BYTES, "signature")

    def encode(self) -> bytes:
        return self.signature

    @classmethod
    def decode(cls, reader: _Reader) -> ConsistencySignature:
        return cls(reader.take(SIGNATURE_BYTES, "signature"))


@dataclass(frozen=True)
class UnmaskRequest:
    """Phase 4, server -> client: each neighbour named exactly once as alive or dropped.

    ``signatures`` carries the consistency-check signatures over U3 (identities on), by signer.
    """

    KIND: ClassVar[MessageType] = MessageType.UNMASK_REQUEST
    alive: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...] = ()

    def __post_init__(self) -> None:
        _check_ids(self.alive, "alive")
        _check_ids(self.dropped, "dropped")
        _check_pairs(self.signatures, SIGNATURE_BYTES, "signatures")

    def encode(self) -> bytes:
        return _pack_ids(self.alive) + _pack_ids(self.dropped) + _pack_pairs(self.signatures)

    @classmethod
    def decode(cls, reader: _Reader) -> UnmaskRequest:
        alive, dropped = reader.ids("alive"), reader.ids("dropped")
        return cls(alive, dropped, _read_pairs(reader, SIGNATURE_BYTES, "signatures"))


@dataclass(frozen=True)
class UnmaskResponse:
    """Phase 4, client -> server: shares of b for alive peers, of the mask key for dropped ones."""

    KIND: ClassVar[MessageType] = MessageType.UNMASK_RESPONSE
    self_mask_shares: tuple[tuple[int, bytes], ...]
    key_shares: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        for name, pairs in (
            ("self_mask_shares", self.self_mask_shares),
            ("key_shares", self.key_shares),
        ):
            _check_ids([i for i, _ in pairs], name)
            _check_shares([share for _, share in pairs], name)

    def encode(self) -> bytes:
        return _pack_pairs(self.self_mask_shares) + _pack_pairs(self.key_shares)

    @classmethod
    def decode(cls, reader: _Reader) -> UnmaskResponse:
        b_shares = _read_pairs(reader, shamir.SHARE_BYTES, "self-mask shares")
        return cls(b_shares, _read_pairs(reader, shamir.SHARE_BYTES, "key shares"))


@dataclass(frozen=True)
class NoiseRemovalRequest:
    """After the round, server -> client: every consistency signature over U3, by signer, so
    that the client can bound the honest clients of any sum (:mod:`secagg.removal`)."""

    KIND: ClassVar[MessageType] = MessageType.NOISE_REMOVAL_REQUEST
    signatures: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        _check_pairs(self.signatures, SIGNATURE_BYTES, "signatures")

    def encode(self) -> bytes:
        return _pack_pairs(self.signatures)

    @classmethod
    def decode(cls, reader: _Reader) -> NoiseRemovalRequest:
        return cls(_read_pairs(reader, SIGNATURE_BYTES, "signatures"))


@dataclass(frozen=True)
class NoiseRemovalResponse:
    """After the round, client -> server: the certified honest floor m the client computed and
    the seeds of the removable noise components it reveals for it, by component index."""

    KIND: ClassVar[MessageType] = MessageType.NOISE_REMOVAL_RESPONSE
    honest_floor: int
    seeds: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        if not 0 < self.honest_floor < 2**32:
            raise ValueError("honest_floor must lie in [1, 2^32)")
        if any(not 0 <= index < 64 for index, _ in self.seeds):
            raise ValueError("a noise component index must lie in [0, 64)")
        if any(a >= b for (a, _), (b, _) in itertools.pairwise(self.seeds)):
            raise ValueError("seeds must be strictly increasing by component index")
        if any(type(seed) is not bytes or len(seed) != SEED_BYTES for _, seed in self.seeds):
            raise ValueError(f"each seed must be {SEED_BYTES} bytes")

    def encode(self) -> bytes:
        count = _U32.pack(len(self.seeds))
        body = b"".join(bytes([index]) + seed for index, seed in self.seeds)
        return _U32.pack(self.honest_floor) + count + body

    @classmethod
    def decode(cls, reader: _Reader) -> NoiseRemovalResponse:
        floor = reader.u32("honest floor")
        count = reader.count(1 + SEED_BYTES, "seeds")
        seeds = tuple(
            (reader.u8("component index"), reader.take(SEED_BYTES, "seed")) for _ in range(count)
        )
        return cls(floor, seeds)


Payload = (
    AdvertiseKeys
    | KeyRoster
    | ShareKeys
    | ShareBundle
    | MaskedInput
    | ConsistencyRequest
    | ConsistencySignature
    | UnmaskRequest
    | UnmaskResponse
    | NoiseRemovalRequest
    | NoiseRemovalResponse
)
_PAYLOADS: dict[MessageType, type] = {
    cls.KIND: cls
    for cls in (
        AdvertiseKeys,
        KeyRoster,
        ShareKeys,
        ShareBundle,
        MaskedInput,
        ConsistencyRequest,
        ConsistencySignature,
        UnmaskRequest,
        UnmaskResponse,
        NoiseRemovalRequest,
        NoiseRemovalResponse,
    )
}


@dataclass(frozen=True)
class Envelope:
    """A decoded message with its routing header.

    Attributes:
        signed_bytes: the header and body, i.e. what ``signature`` covers.
    """

    kind: MessageType
    session_id: bytes
    round_index: int
    sender: int
    payload: Payload
    signature: bytes
    signed_bytes: memoryview


def encode(
    payload: Payload,
    *,
    session_id: bytes,
    round_index: int,
    sender: int,
    signing_key: SigningKey | None = None,
) -> bytes:
    """Frame ``payload``; with a ``signing_key`` the whole frame is signed (Ed25519)."""
    body = payload.encode()
    header = _HEADER.pack(
        _MAGIC,
        PROTOCOL_VERSION,
        payload.KIND,
        session_id,
        round_index,
        sender,
        signing_key is not None,
        len(body),
    )
    framed = header + body
    return framed + signing_key.sign(framed) if signing_key is not None else framed


def size_limit(config: SecAggConfig) -> int:
    """The largest message any party of ``config`` can legitimately send, with headroom."""
    per_client = 4 + 2 * KEY_BYTES + 1 + SIGNATURE_BYTES + 4 + CIPHERTEXT_BYTES
    instance = 1 + DIGEST_BYTES * (1 + path_length(config.num_clients))
    vector = config.vector_length * config.word_dtype.itemsize
    return (
        _HEADER.size
        + SIGNATURE_BYTES
        + 1024
        + instance
        + max(vector + 5, per_client * config.num_clients)
    )


def decode(data: bytes, *, max_bytes: int) -> Envelope:
    """Parse and validate one framed message.

    Args:
        data: the bytes received.
        max_bytes: refuse anything larger before looking inside.

    Raises:
        MalformedMessage: wrong magic, unknown kind, bad lengths, trailing bytes, invalid fields.
        UnsupportedVersion: a protocol version other than this implementation's.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedMessage(f"message must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise MalformedMessage(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    if len(data) < _HEADER.size:
        raise MalformedMessage(f"message of {len(data)} bytes is shorter than the header")
    magic, version, kind, session_id, round_index, sender, auth, body_len = _HEADER.unpack_from(
        data
    )
    if magic != _MAGIC:
        raise MalformedMessage("not a privagg secure-aggregation message (bad magic)")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"message uses protocol version {version}; this side speaks {PROTOCOL_VERSION}; "
            "install the same privagg version on every party",
            sender=sender,
        )
    try:
        message_type = MessageType(kind)
    except ValueError:
        raise MalformedMessage(f"unknown message kind {kind}", sender=sender) from None
    if auth > 1:
        raise MalformedMessage(f"unknown authentication flag {auth}", sender=sender)
    signature_len = SIGNATURE_BYTES if auth else 0
    if len(data) != _HEADER.size + body_len + signature_len:
        raise MalformedMessage(
            f"{message_type.name} frame is {len(data)} bytes, header says "
            f"{_HEADER.size + body_len + signature_len}",
            sender=sender,
        )
    end = _HEADER.size + body_len
    view = memoryview(data)
    reader = _Reader(view[_HEADER.size : end])
    try:
        payload = _PAYLOADS[message_type].decode(reader)
        reader.finish()
    except (ValueError, struct.error) as error:
        raise MalformedMessage(f"invalid {message_type.name}: {error}", sender=sender) from None
    return Envelope(message_type, session_id, round_index, sender, payload, data[end:], view[:end])
