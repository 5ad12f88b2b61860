"""Every key, seed, commitment and signed transcript of the protocol, derived in one place.

Each derivation names its purpose and binds the session digest (which covers the session id,
the round, the cohort and all parameters) and the ids of the parties involved.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from secagg.errors import AuthenticationFailed
from secagg.hazmat import aead, kdf, signing
from secagg.hazmat.exceptions import InvalidAuthentication

__all__ = [
    "channel_key",
    "consistency_transcript",
    "key_advertisement_transcript",
    "pairwise_seed",
    "self_mask_commitment",
    "self_mask_seed",
    "share_associated_data",
    "verify_key_advertisement",
]

_PAIR = struct.Struct(">II")


def channel_key(shared_secret: bytes, digest: bytes, sender: int, receiver: int) -> bytes:
    """AES-GCM key of the share message ``sender`` encrypts to ``receiver`` (random nonces)."""
    return kdf.derive(
        shared_secret,
        label=b"share-channel",
        context=digest + _PAIR.pack(sender, receiver),
        length=aead.KEY_BYTES,
    )


def share_associated_data(
    session_id: bytes, round_index: int, digest: bytes, sender: int, receiver: int
) -> bytes:
    """AEAD associated data: session, round, sender and receiver (and the parameter digest)."""
    return (
        b"privagg/share\x00"
        + session_id
        + struct.pack(">III", round_index, sender, receiver)
        + digest
    )


def pairwise_seed(shared_secret: bytes, digest: bytes, a: int, b: int) -> bytes:
    """The mask seed s_ab shared by clients ``a`` and ``b`` (symmetric in a, b)."""
    low, high = sorted((a, b))
    return kdf.derive(shared_secret, label=b"pairwise-mask", context=digest + _PAIR.pack(low, high))


def self_mask_seed(secret: bytes, digest: bytes, owner: int) -> bytes:
    """The PRG seed of ``owner``'s self mask, from its secret b."""
    return kdf.derive(secret, label=b"self-mask", context=digest + struct.pack(">I", owner))


def self_mask_commitment(secret: bytes, digest: bytes, owner: int) -> bytes:
    """A binding commitment to b (b is 256 uniform bits, so it hides b as well)."""
    return kdf.derive(
        secret, label=b"self-mask-commitment", context=digest + struct.pack(">I", owner)
    )


def key_advertisement_transcript(
    digest: bytes, sender: int, channel_key: bytes, mask_key: bytes
) -> bytes:
    """What a client signs to vouch for its two public keys of this session."""
    return b"privagg/advertise\x00" + digest + struct.pack(">I", sender) + channel_key + mask_key


def verify_key_advertisement(
    identity: bytes,
    digest: bytes,
    owner: int,
    channel_key: bytes,
    mask_key: bytes,
    signature: bytes,
    *,
    sender: int,
) -> None:
    """Check ``owner``'s signature over its two session keys against its identity key.

    Raises:
        AuthenticationFailed: the signature is missing or invalid; ``sender`` is who passed it on.
    """
    transcript = key_advertisement_transcript(digest, owner, channel_key, mask_key)
    try:
        signing.verify(identity, signature, transcript)
    except InvalidAuthentication:
        raise AuthenticationFailed(
            f"key signature of client {owner} does not verify", sender=sender
        ) from None


def consistency_transcript(digest: bytes, instance_root: bytes, survivors: Iterable[int]) -> bytes:
    """What a client signs in the consistency check: the session instance and its set U3.

    ``instance_root`` commits to every key advertised in this run of the session
    (:mod:`secagg.instance`), so a signature from another run of the same session never verifies.
    """
    ids = sorted(survivors)
    return (
        b"privagg/consistency\x00"
        + digest
        + instance_root
        + struct.pack(f">I{len(ids)}I", len(ids), *ids)
    )
