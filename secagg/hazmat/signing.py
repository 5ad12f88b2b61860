"""Ed25519 signatures (RFC 8032) for long-term client identities."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secagg.hazmat._checks import require_bytes
from secagg.hazmat.exceptions import InvalidAuthentication

__all__ = ["PUBLIC_KEY_BYTES", "SIGNATURE_BYTES", "SigningKey", "verify"]

PRIVATE_KEY_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


class SigningKey:
    """An Ed25519 private key held as its 32-byte seed."""

    __slots__ = ("_key", "public_bytes")

    def __init__(self, private_bytes: bytes) -> None:
        """Load a key from its 32-byte seed."""
        seed = require_bytes("private_bytes", private_bytes, PRIVATE_KEY_BYTES)
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_bytes = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls, random_bytes: Callable[[int], bytes]) -> SigningKey:
        """Draw a fresh key from ``random_bytes`` (``os.urandom`` outside of tests)."""
        return cls(random_bytes(PRIVATE_KEY_BYTES))

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte signature of ``message``."""
        return self._key.sign(require_bytes("message", message))


def verify(public_bytes: bytes, signature: bytes, message: bytes) -> None:
    """Check an Ed25519 signature.

    Raises:
        ValueError: the public key is not 32 bytes or not a valid point encoding.
        InvalidAuthentication: the signature is not 64 bytes or does not verify.
    """
    key = Ed25519PublicKey.from_public_bytes(
        require_bytes("public_bytes", public_bytes, PUBLIC_KEY_BYTES)
    )
    signature = require_bytes("signature", signature)
    if len(signature) != SIGNATURE_BYTES:
        raise InvalidAuthentication(
            f"signature must be {SIGNATURE_BYTES} bytes, got {len(signature)}"
        )
    try:
        key.verify(signature, require_bytes("message", message))
    except InvalidSignature:
        raise InvalidAuthentication("Ed25519 signature does not verify") from None
