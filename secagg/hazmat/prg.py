"""Mask expansion: AES-256-CTR keystream added into ring vectors, in place and in chunks.

The ring is Z_{2^b} with b <= 64, held in little-endian ``uint32`` (b <= 32) or ``uint64`` words.
Raw keystream words are uniform over the word, so reducing them modulo 2^b is exactly uniform:
no rejection sampling and no statistical RNG.

Memory is O(d + chunk) whatever the number of seeds: the loop walks the output one chunk at a
time and, for each chunk, runs every seed's CTR stream over a small scratch matrix. The output
chunk stays in cache while all seeds are added into it, which is also why this order is faster
than expanding one whole mask after another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg.hazmat._checks import require_bytes

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_GROUP",
    "SEED_BYTES",
    "KeystreamReader",
    "MaskTerm",
    "accumulate",
    "keystream",
]

SEED_BYTES = 32
ChunkHook = Callable[[int, np.ndarray], None]
"""``hook(start, segment)``: a pass over ``out[start:start + len(segment)]`` (:func:`accumulate`)."""
DEFAULT_CHUNK_BYTES = 1 << 17
DEFAULT_GROUP = 16
_BLOCK_BYTES = 16
_ZERO_COUNTER = bytes(_BLOCK_BYTES)


class MaskTerm(NamedTuple):
    """One mask: the keystream of ``seed`` is added to the vector, or subtracted if ``subtract``."""

    seed: bytes
    subtract: bool = False


def _encryptor(seed: bytes, counter_block: bytes = _ZERO_COUNTER):
    key = require_bytes("seed", seed, SEED_BYTES)
    return Cipher(algorithms.AES(key), modes.CTR(counter_block)).encryptor()


def keystream(seed: bytes, length: int, *, counter_block: bytes = _ZERO_COUNTER) -> bytes:
    """Return ``length`` bytes of AES-256-CTR keystream for a 32-byte ``seed``.

    ``counter_block`` is the initial 128-bit big-endian counter (all zeros in the protocol, where
    every seed is used for exactly one stream).
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    counter_block = require_bytes("counter_block", counter_block, _BLOCK_BYTES)
    return _encryptor(seed, counter_block).update(bytes(length))


class KeystreamReader:
    """The AES-256-CTR keystream of one seed, read front to back in pieces of any length.

    Example:
        >>> reader = KeystreamReader(bytes(32))
        >>> reader(5) + reader(11) == keystream(bytes(32), 16)
        True
    """

    SLACK = _BLOCK_BYTES - 1
    """Bytes a :meth:`read_into` buffer needs beyond the length read (OpenSSL's rule)."""

    def __init__(self, seed: bytes) -> None:
        self._encryptor = _encryptor(seed)
        self._zeros = b""

    def __call__(self, length: int) -> bytes:
        """The next ``length`` bytes of the stream."""
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        return self._encryptor.update(bytes(length))

    def read_into(self, buffer: bytearray, length: int) -> None:
        """Write the next ``length`` bytes of the stream to the front of ``buffer``, which
        must hold ``length + SLACK`` bytes (no allocation per call)."""
        if length < 0 or len(buffer) < length + self.SLACK:
            raise ValueError(
                f"read_into needs 0 <= length and a buffer of length + {self.SLACK} bytes, got "
                f"length {length} and {len(buffer)} bytes"
            )
        if len(self._zeros) < length:
            self._zeros = bytes(length)
        self._encryptor.update_into(memoryview(self._zeros)[:length], buffer)


def accumulate(
    out: np.ndarray,
    terms: Sequence[MaskTerm],
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    group: int = DEFAULT_GROUP,
    offset: int = 0,
    fill: ChunkHook | None = None,
    drain: ChunkHook | None = None,
) -> None:
    """Add (or subtract) the keystream of every term into ``out``, modulo the word size.

    Keystreams are written ``group`` at a time into a cache-resident scratch matrix, summed with
    one vectorised reduction and folded into the output chunk: one pass over the output per group
    instead of one per seed.

    Args:
        out: a C-contiguous 1-D ``uint32`` or ``uint64`` array, updated in place.
        terms: the masks to apply; each seed's stream starts at counter zero.
        chunk_bytes: bytes of the output processed at a time (a multiple of 16).
        group: keystreams summed per reduction.
        offset: the word of the keystream that ``out[0]`` receives (``out`` is the slice
            ``[offset, offset + out.size)`` of a longer vector); ``offset`` words must fill
            whole 16-byte AES blocks.

    Raises:
        TypeError: ``out`` is not a writeable, contiguous uint32/uint64 vector.
        ValueError: ``chunk_bytes`` is not a positive multiple of 16, ``group`` < 1, or
            ``offset`` is negative or not on a block boundary.
    """
    if not isinstance(out, np.ndarray) or out.dtype not in (np.uint32, np.uint64):
        raise TypeError("out must be a numpy uint32 or uint64 array")
    if out.ndim != 1 or not out.flags.c_contiguous or not out.flags.writeable:
        raise TypeError("out must be a writeable, C-contiguous 1-D array")
    if chunk_bytes <= 0 or chunk_bytes % _BLOCK_BYTES:
        raise ValueError(f"chunk_bytes must be a positive multiple of 16, got {chunk_bytes}")
    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    word = np.dtype(out.dtype).newbyteorder("<")
    if isinstance(offset, bool) or offset < 0 or (offset * word.itemsize) % _BLOCK_BYTES:
        raise ValueError(
            f"offset must be a non-negative number of words filling whole 16-byte blocks, "
            f"got {offset}"
        )
    if out.size == 0 or not (terms or fill or drain):
        return
    counter = ((offset * word.itemsize) // _BLOCK_BYTES).to_bytes(_BLOCK_BYTES, "big")
    chunk_words = chunk_bytes // word.itemsize
    group = max(1, min(group, len(terms)))
    zeros = memoryview(bytes(chunk_bytes))
    scratch = bytearray(group * chunk_bytes + _BLOCK_BYTES - 1)
    rows = np.frombuffer(scratch, dtype=word, count=group * chunk_words).reshape(group, chunk_words)
    total = np.empty(chunk_words, dtype=out.dtype)
    batches = []
    for subtract in (False, True):
        encryptors = [_encryptor(t.seed, counter) for t in terms if bool(t.subtract) == subtract]
        batches += [(encryptors[i : i + group], subtract) for i in range(0, len(encryptors), group)]
    views = [memoryview(scratch)[row * chunk_bytes :] for row in range(group)]
    for start in range(0, out.size, chunk_words):
        segment = out[start : start + chunk_words]
        words = segment.size
        plain = zeros[: words * word.itemsize]
        if fill is not None:
            fill(start, segment)
        for encryptors, subtract in batches:
            for encryptor, view in zip(encryptors, views, strict=False):
                encryptor.update_into(plain, view)
            np.add.reduce(rows[: len(encryptors), :words], axis=0, out=total[:words])
            (np.subtract if subtract else np.add)(segment, total[:words], out=segment)
        if drain is not None:
            drain(start, segment)
