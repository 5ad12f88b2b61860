"""AES-256-GCM authenticated encryption for the Shamir shares sent between clients.

Each key encrypts exactly one message (keys are derived per session and per direction), so the
12-byte nonce is derived together with the key rather than drawn at random.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secagg.hazmat._checks import require_bytes
from secagg.hazmat.exceptions import InvalidAuthentication

__all__ = ["KEY_BYTES", "NONCE_BYTES", "TAG_BYTES", "open_", "seal"]

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16


def seal(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext``; the result is ciphertext followed by the tag."""
    cipher = AESGCM(require_bytes("key", key, KEY_BYTES))
    return cipher.encrypt(
        require_bytes("nonce", nonce, NONCE_BYTES),
        require_bytes("plaintext", plaintext),
        require_bytes("associated_data", associated_data),
    )


def open_(key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """Verify and decrypt a :func:`seal` output.

    Raises:
        InvalidAuthentication: the ciphertext, tag, key, nonce or associated data do not match.
    """
    cipher = AESGCM(require_bytes("key", key, KEY_BYTES))
    ciphertext = require_bytes("ciphertext", ciphertext)
    if len(ciphertext) < TAG_BYTES:
        raise InvalidAuthentication("ciphertext is shorter than the authentication tag")
    try:
        return cipher.decrypt(
            require_bytes("nonce", nonce, NONCE_BYTES),
            ciphertext,
            require_bytes("associated_data", associated_data),
        )
    except InvalidTag:
        raise InvalidAuthentication("AES-GCM tag does not verify") from None
