"""X25519 Diffie-Hellman key agreement (RFC 7748).

Keys travel as 32 raw bytes. A shared secret that is all zeros (the peer sent a low-order point)
is rejected: accepting it would let an active attacker force a known key.

Private keys are generated already clamped (RFC 7748, Sec. 5), so each key has exactly one
canonical 32-byte encoding: a secret reconstructed from shares can then be compared bit for bit
(:func:`is_clamped`), not only through the public key, which ignores the five clamped bits.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from secagg.hazmat._checks import require_bytes

__all__ = ["KEY_BYTES", "AgreementKey", "clamp", "is_clamped"]

KEY_BYTES = 32
_ALL_ZERO = bytes(KEY_BYTES)


def clamp(scalar: bytes) -> bytes:
    """RFC 7748 clamping: clear the 3 low bits and the top bit, set bit 254."""
    raw = bytearray(require_bytes("scalar", scalar, KEY_BYTES))
    raw[0] &= 0xF8
    raw[31] = (raw[31] & 0x7F) | 0x40
    return bytes(raw)


def is_clamped(scalar: bytes) -> bool:
    """Whether ``scalar`` is a canonical (already clamped) X25519 private key."""
    return clamp(scalar) == scalar


class AgreementKey:
    """An X25519 private key, with its raw encodings.

    Example:
        >>> import os
        >>> alice, bob = AgreementKey.generate(os.urandom), AgreementKey.generate(os.urandom)
        >>> alice.exchange(bob.public_bytes) == bob.exchange(alice.public_bytes)
        True
    """

    __slots__ = ("_key", "private_bytes", "public_bytes")

    def __init__(self, private_bytes: bytes) -> None:
        """Load a key from its 32 raw private bytes (RFC 7748 clamping is applied on use)."""
        self.private_bytes = require_bytes("private_bytes", private_bytes, KEY_BYTES)
        self._key = X25519PrivateKey.from_private_bytes(self.private_bytes)
        self.public_bytes = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls, random_bytes: Callable[[int], bytes]) -> AgreementKey:
        """Draw a fresh, clamped key from ``random_bytes`` (``os.urandom`` outside of tests)."""
        return cls(clamp(random_bytes(KEY_BYTES)))

    def exchange(self, peer_public_bytes: bytes) -> bytes:
        """Return the 32-byte shared secret with a peer's raw public key.

        Raises:
            TypeError: ``peer_public_bytes`` is not bytes.
            ValueError: it is not 32 bytes, or the shared secret is all zeros (low-order point).
        """
        peer = X25519PublicKey.from_public_bytes(
            require_bytes("peer_public_bytes", peer_public_bytes, KEY_BYTES)
        )
        try:
            secret = self._key.exchange(peer)
        except ValueError as error:  # the backend refuses low-order points itself
            raise ValueError("X25519 shared secret is all zeros (low-order public key)") from error
        if secret == _ALL_ZERO:
            raise ValueError("X25519 shared secret is all zeros (low-order public key)")
        return secret
