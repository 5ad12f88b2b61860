"""Sources of randomness for the protocol.

Every function that draws randomness takes a ``random_bytes(n) -> bytes`` callable. Production
code uses :func:`os.urandom` (the default everywhere). :class:`DeterministicRandom` exists so that
tests and simulations can be replayed; it must never be used to protect real data.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from secagg.hazmat import kdf
from secagg.hazmat.prg import KeystreamReader

__all__ = ["DeterministicRandom", "RandomSource", "system_random"]

RandomSource = Callable[[int], bytes]
system_random: RandomSource = os.urandom


class DeterministicRandom:
    """A replayable byte stream (AES-256-CTR keyed from ``seed``), for tests and simulations only.

    Example:
        >>> DeterministicRandom(7)(4) == DeterministicRandom(7)(4)
        True
    """

    def __init__(self, seed: int | bytes) -> None:
        """Key the stream from an integer or a byte string."""
        material = (
            seed.to_bytes(16, "little", signed=True) if isinstance(seed, int) else bytes(seed)
        )
        self._key = kdf.derive(material, label=b"deterministic-random", context=b"")
        self._stream = KeystreamReader(self._key)

    def __call__(self, length: int) -> bytes:
        """Return the next ``length`` bytes of the stream."""
        return self._stream(length)

    def fork(self, label: str) -> DeterministicRandom:
        """An independent stream for one party, so parties do not perturb each other's draws."""
        return DeterministicRandom(kdf.derive(self._key, label=b"fork", context=label.encode()))
