"""Argument checks shared by the hazmat modules (pyca style: TypeError for type, ValueError for size)."""

__all__ = ["require_bytes"]


def require_bytes(name: str, value: object, length: int | None = None) -> bytes:
    """Return ``value`` as ``bytes`` after checking its type and, if given, its exact length."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    data = bytes(value)
    if length is not None and len(data) != length:
        raise ValueError(f"{name} must be exactly {length} bytes, got {len(data)}")
    return data
