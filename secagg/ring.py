"""Vectors over the ring Z_{2^b}: validation of caller inputs and the signed lift."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from secagg.errors import InvalidInput

__all__ = ["to_ring", "to_signed"]


def to_ring(
    values: ArrayLike, *, ring_bits: int, length: int, bound: int | None = None
) -> np.ndarray:
    """Copy an integer vector into ring words (uint32 for b <= 32, else uint64), reduced mod 2^b.

    Signed integers are taken modulo 2^b (two's complement), so ``-1`` becomes ``2^b - 1``.

    Raises:
        InvalidInput: not a 1-D integer vector of ``length`` elements, or outside ``bound``.
    """
    array = np.asarray(values)
    if array.ndim != 1 or array.shape[0] != length:
        raise InvalidInput(
            f"input must be a 1-D vector of {length} elements, got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise InvalidInput(
            f"input must hold integers (ring elements), got {array.dtype}; "
            "encode floats first (fixed point)"
        )
    word = np.uint32 if ring_bits <= 32 else np.uint64
    ring = array.astype(np.uint64, copy=False).astype(word, copy=True)
    if ring_bits not in (32, 64):
        ring &= word((1 << ring_bits) - 1)
    if bound is not None:
        signed = to_signed(ring, ring_bits)
        worst = int(np.max(np.abs(signed))) if signed.size else 0
        if worst > bound:
            raise InvalidInput(
                f"an input element has magnitude {worst}, above the declared input_bound {bound}"
            )
    return ring


def to_signed(ring: np.ndarray, ring_bits: int) -> np.ndarray:
    """Lift ring elements to signed integers in [-2^(b-1), 2^(b-1)) as ``int64``."""
    values = ring.astype(np.uint64)
    if ring_bits == 64:
        return values.view(np.int64).copy()
    half = np.uint64(1 << (ring_bits - 1))
    signed = values.astype(np.int64)
    return np.where(values >= half, signed - (1 << ring_bits), signed)
