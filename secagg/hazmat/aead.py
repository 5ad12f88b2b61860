"""AES-256-GCM authenticated encryption for the Shamir shares sent between clients.

A key is derived per session and per direction and normally encrypts one message. The 12-byte
nonce is nevertheless drawn at random for every encryption and sent in front of the ciphertext
(:func:`seal_framed`): a party restored from an old state snapshot that encrypts again under the
same key then uses a fresh nonce, never repeating a key/nonce pair (a repeat would reveal the XOR
of the two plaintexts and GCM's authentication key).
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secagg.hazmat._checks import require_bytes
from secagg.hazmat.exceptions import InvalidAuthentication

__all__ = [
    "FRAMED_OVERHEAD",
    "KEY_BYTES",
    "NONCE_BYTES",
    "TAG_BYTES",
    "open_",
    "open_framed",
    "seal",
    "seal_framed",
]

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
FRAMED_OVERHEAD = NONCE_BYTES + TAG_BYTES


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


def seal_framed(
    key: bytes, plaintext: bytes, associated_data: bytes, *, random_bytes: Callable[[int], bytes]
) -> bytes:
    """Encrypt under a fresh random nonce; the result is ``nonce | ciphertext | tag``."""
    nonce = require_bytes("nonce", random_bytes(NONCE_BYTES), NONCE_BYTES)
    return nonce + seal(key, nonce, plaintext, associated_data)


def open_framed(key: bytes, framed: bytes, associated_data: bytes) -> bytes:
    """Verify and decrypt a :func:`seal_framed` output.

    Raises:
        InvalidAuthentication: too short, or the tag does not verify.
    """
    framed = require_bytes("framed", framed)
    if len(framed) < FRAMED_OVERHEAD:
        raise InvalidAuthentication("framed ciphertext is shorter than nonce and tag")
    return open_(key, framed[:NONCE_BYTES], framed[NONCE_BYTES:], associated_data)
