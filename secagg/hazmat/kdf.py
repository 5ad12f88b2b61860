"""HKDF-SHA256 (RFC 5869) with explicit domain separation.

Every derived key in the protocol names its purpose (``label``) and its context (session digest,
round and party ids), so that no two uses of one secret can yield the same key.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.hazmat._checks import require_bytes

__all__ = ["DOMAIN", "derive", "hkdf_sha256"]

DOMAIN = b"privagg/secagg/v1"
_SHA256 = hashes.SHA256()


def hkdf_sha256(
    secret: bytes, *, info: bytes, length: int = 32, salt: bytes | None = None
) -> bytes:
    """Plain HKDF-SHA256 (RFC 5869): extract with ``salt``, expand ``length`` bytes with ``info``."""
    secret = require_bytes("secret", secret)
    info = require_bytes("info", info)
    if not 1 <= length <= 255 * 32:
        raise ValueError(f"length must be between 1 and {255 * 32} bytes, got {length}")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def derive(secret: bytes, *, label: bytes, context: bytes, length: int = 32) -> bytes:
    """Derive ``length`` bytes bound to a purpose and a context.

    The HKDF ``info`` is ``DOMAIN | 0x00 | label | 0x00 | context``; labels are fixed ASCII
    strings without NUL bytes, so distinct (label, context) pairs give distinct ``info`` values.
    """
    label = require_bytes("label", label)
    if not label or b"\x00" in label:
        raise ValueError("label must be non-empty and free of NUL bytes")
    info = DOMAIN + b"\x00" + label + b"\x00" + require_bytes("context", context)
    return HKDF(algorithm=_SHA256, length=length, salt=None, info=info).derive(
        require_bytes("secret", secret)
    )
