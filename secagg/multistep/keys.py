"""Every secret of a multi-step session, derived in one place (HKDF-SHA256, domain-separated).

Once per session, from the X25519 secret ``DH(a_u, a_v)`` of members u and v:

* ``pair_secret``: the pairwise mask secret of u and v (symmetric);
* ``channel_key``: the AES-GCM key for self-mask shares u sends to v (one per direction).

Per step, from the step digest (which binds the session, step, attempt, contributors and d):

* ``step_mask_seed``: the AES-CTR seed of u and v's pairwise mask in that step;
* ``self_mask_seed`` / ``self_mask_commitment``: u's fresh self-mask seed b for that step.

HKDF is a pseudorandom function of its secret, so the step seeds of different steps are
independent: revealing the seeds of one step says nothing about any other (SECURITY.md,
"Secure data-parallel training").
"""

from __future__ import annotations

import struct

from secagg.hazmat import aead, kdf

__all__ = [
    "channel_key",
    "pair_secret",
    "self_mask_commitment",
    "self_mask_seed",
    "share_associated_data",
    "step_mask_seed",
]

_PAIR = struct.Struct(">II")
_ONE = struct.Struct(">I")


def _pair(a: int, b: int) -> bytes:
    low, high = sorted((a, b))
    return _PAIR.pack(low, high)


def pair_secret(shared_secret: bytes, session_digest: bytes, a: int, b: int) -> bytes:
    """The session's pairwise mask secret of members ``a`` and ``b`` (symmetric in a, b)."""
    return kdf.derive(shared_secret, label=b"multistep-pair", context=session_digest + _pair(a, b))


def channel_key(shared_secret: bytes, session_digest: bytes, sender: int, receiver: int) -> bytes:
    """AES-GCM key of the self-mask shares ``sender`` encrypts to ``receiver`` (random nonces)."""
    return kdf.derive(
        shared_secret,
        label=b"multistep-channel",
        context=session_digest + _PAIR.pack(sender, receiver),
        length=aead.KEY_BYTES,
    )


def step_mask_seed(secret: bytes, step_digest: bytes, a: int, b: int) -> bytes:
    """The AES-CTR seed of the pairwise mask of ``a`` and ``b`` in one step (symmetric)."""
    return kdf.derive(secret, label=b"multistep-step-mask", context=step_digest + _pair(a, b))


def self_mask_seed(secret: bytes, step_digest: bytes, owner: int) -> bytes:
    """The AES-CTR seed of ``owner``'s self mask in one step, from its fresh 32-byte secret b."""
    return kdf.derive(secret, label=b"multistep-self-mask", context=step_digest + _ONE.pack(owner))


def self_mask_commitment(secret: bytes, step_digest: bytes, owner: int) -> bytes:
    """A binding commitment to b (b is 256 uniform bits, so it hides b as well)."""
    return kdf.derive(
        secret, label=b"multistep-self-commitment", context=step_digest + _ONE.pack(owner)
    )


def share_associated_data(
    session_id: bytes, step_digest: bytes, sender: int, receiver: int
) -> bytes:
    """AEAD associated data of a self-mask share: session, step (digest), sender, receiver."""
    return b"privagg/multistep/share\x00" + session_id + step_digest + _PAIR.pack(sender, receiver)
