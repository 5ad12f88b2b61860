"""Gradients as ring vectors: clip, fixed point, stochastic rounding, in torch and in place.

A rank's gradient g (float) becomes ``q = SR(clip(g) * 2^p)`` in Z_{2^b}, held in an ``int32``
(b = 32) or ``int64`` (b = 64) tensor, which is what torch.distributed can all-reduce (its
integer sums wrap around, i.e. they are sums modulo 2^b). ``SR`` rounds down or up with the
probabilities that make ``E[q] = clip(g) 2^p``; the uniform bits come from AES-256-CTR keyed by
``os.urandom`` (:mod:`secagg.hazmat.prg`), 24 bits per value, so the rounding probability is exact
to 2^-24.

**Error bound.** Each q is within 1 of ``clip(g) 2^p``, so the decoded sum of n contributions is
within ``n 2^-p`` of the sum of the clipped gradients, elementwise (plus the rounding of the
decoded value to the output's float type).

**No wrap-around.** ``p`` is the largest precision for which n contributions cannot overflow the
signed ring: ``n ceil(clip 2^p) <= 2^(b-1) - 1`` (:meth:`GradientEncoding.precision_bits`), and
at most ``40 - ceil(log2 clip)`` so that the rounding arithmetic stays exact in float64.

**Why 32 bits by default.** A 32-bit ring puts exactly the words of a float32 all-reduce on the
wire and needs half the mask keystream of a 64-bit ring. With clip 8 it still leaves
``p = 25`` bits of precision for 4 ranks and ``p = 22`` for 32 (resolution 3e-8 and 2.4e-7),
finer than the float32 rounding of typical gradients' sums; 64 bits are there for wider clips.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from fl.errors import ClippedValuesWarning, InputError
from secagg.hazmat.prg import SEED_BYTES, ChunkHook, KeystreamReader
from secagg.randomness import RandomSource

__all__ = ["GradientEncoding"]

_MAX_SCALED_BITS = 40
_UNIFORM_BITS = 24
_CHUNK = 1 << 15  # values per pass: the rounding's five work buffers fit the L2 cache


@dataclass(frozen=True)
class GradientEncoding:
    """Fixed-point encoding of float tensors into a ring of 2^32 or 2^64.

    Attributes:
        clip: every value is clipped to [-clip, clip] (with a :class:`ClippedValuesWarning`
            naming how many values were clipped), so n contributions of one step fit the ring.
        ring_bits: 32 (int32 words, the wire of a float32 all-reduce) or 64 (int64).

    Example:
        >>> encoding = GradientEncoding(clip=4.0)
        >>> p = encoding.precision_bits(contributors=2)
        >>> a = encoding.encode(torch.tensor([0.5, -1.25]), contributors=2)
        >>> b = encoding.encode(torch.tensor([0.25, 1.0]), contributors=2)
        >>> encoding.decode(a + b, contributors=2).tolist()
        [0.75, -0.25]
    """

    clip: float = 8.0
    ring_bits: int = 32
    _scratch: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.clip, bool) or not isinstance(self.clip, (int, float)):
            raise InputError(f"clip must be a number, got {self.clip!r}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise InputError(f"clip must be a positive finite number, got {self.clip}")
        object.__setattr__(self, "clip", float(self.clip))
        if self.ring_bits not in (32, 64):
            raise InputError(
                f"ring_bits must be 32 (the wire of a float32 all-reduce) or 64, got "
                f"{self.ring_bits}"
            )

    @property
    def dtype(self) -> torch.dtype:
        """The integer dtype of one ring word: int32 or int64."""
        return torch.int32 if self.ring_bits == 32 else torch.int64

    @property
    def signed_word(self) -> type[np.signedinteger]:
        """The numpy type of one ring word read as signed (how it decodes): int32 or int64."""
        return np.int32 if self.ring_bits == 32 else np.int64

    @property
    def unsigned_word(self) -> type[np.unsignedinteger]:
        """The numpy type of one ring word as the masks see it: uint32 or uint64."""
        return np.uint32 if self.ring_bits == 32 else np.uint64

    @property
    def parameters(self) -> bytes:
        """32 bytes naming this encoding; members of one session must share them."""
        return hashlib.sha256(
            b"privagg/distributed/encoding/v1\x00" + struct.pack(">dB", self.clip, self.ring_bits)
        ).digest()

    def precision_bits(self, contributors: int) -> int:
        """p: the largest precision at which ``contributors`` values cannot wrap the ring.

        Raises:
            InputError: even p = 0 overflows (the clip is too wide for the ring).
        """
        limit = 2 ** (self.ring_bits - 1) - 1
        cap = _MAX_SCALED_BITS - max(0, math.ceil(math.log2(self.clip)))
        for p in range(min(cap, self.ring_bits), -1, -1):
            if contributors * math.ceil(self.clip * 2.0**p) <= limit:
                return p
        raise InputError(
            f"a clip of {self.clip} for {contributors} ranks does not fit a {self.ring_bits}-bit "
            "ring; lower the clip or use ring_bits=64"
        )

    def encode(
        self,
        values: torch.Tensor,
        *,
        contributors: int,
        out: torch.Tensor | None = None,
        random_bytes: RandomSource = os.urandom,
    ) -> torch.Tensor:
        """Clip, scale and stochastically round a float tensor into ring words.

        Args:
            values: the gradient (any float dtype, any shape, any device: read on the CPU).
            contributors: how many such vectors the step sums (sets p).
            out: an optional 1-D tensor of ``dtype`` and ``values.numel()`` words to write into.
            random_bytes: the key source for the rounding bits.

        Returns:
            The ring words (``out`` if given).

        Raises:
            InputError: non-finite values (a diverged rank), or ``out`` does not fit.

        Warns:
            ClippedValuesWarning: some values were beyond [-clip, clip]; names how many.
        """
        flat = _as_numpy(values)
        if out is None:
            out = torch.empty(flat.size, dtype=self.dtype)
        if out.dtype != self.dtype or out.shape != (flat.size,) or not out.is_contiguous():
            raise InputError(f"out must be a contiguous {self.dtype} tensor of {flat.size} words")
        self._filler(flat, contributors, random_bytes)(0, out.numpy())
        return out

    def encoder(
        self, values: torch.Tensor, *, contributors: int, random_bytes: RandomSource = os.urandom
    ) -> ChunkHook:
        """:meth:`encode` one chunk at a time, as the ``fill`` of a masking pass.

        The values are checked now (the same errors and warning as :meth:`encode`); the returned
        ``fill(start, segment)`` writes the ring words of ``values[start:start + len(segment)]``
        into ``segment`` (a ``uint32``/``uint64`` array). Call it once per chunk, front to back:
        the rounding bits are one stream, and the words equal :meth:`encode`'s for the same
        ``random_bytes``.
        """
        return self._filler(_as_numpy(values), contributors, random_bytes)

    def decode(
        self, total: torch.Tensor, *, contributors: int, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """The float sum (a new tensor of ``dtype``) from the ring sum of ``contributors``
        encoded vectors."""
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        result = torch.empty(total.numel(), dtype=compute)
        self.decoder(result, contributors=contributors)(0, total.reshape(-1).numpy())
        return result.to(dtype)

    def decoder(self, out: torch.Tensor, *, contributors: int) -> ChunkHook:
        """:meth:`decode` one chunk at a time, as the ``drain`` of an unmasking pass:
        ``drain(start, segment)`` writes the float sum of the ring words ``segment`` into
        ``out[start:start + len(segment)]`` (``out``: a contiguous CPU float32/float64 tensor)."""
        if out.dtype not in (torch.float32, torch.float64) or not out.is_contiguous():
            raise InputError(f"out must be a contiguous float32 or float64 tensor, got {out.dtype}")
        result = out.detach().reshape(-1).numpy()
        signed = self.signed_word
        factor = result.dtype.type(2.0 ** -self.precision_bits(contributors))

        def drain(start: int, segment: np.ndarray) -> None:
            piece = result[start : start + segment.size]
            piece[...] = segment.view(signed)
            piece *= factor  # a power of two: exact

        return drain

    def _filler(self, flat: np.ndarray, contributors: int, random_bytes: RandomSource) -> ChunkHook:
        if flat.size:
            low, high = float(flat.min()), float(flat.max())
        else:
            low = high = 0.0
        if not (math.isfinite(low) and math.isfinite(high)):
            bad = int(np.count_nonzero(~np.isfinite(flat)))
            raise InputError(
                f"the gradient holds {bad} NaN or infinite values (a diverged rank); skip the "
                "step or lower the learning rate"
            )
        if high > self.clip or low < -self.clip:
            count = int(np.count_nonzero(np.abs(flat) > self.clip))
            warnings.warn(
                f"{count} of {flat.size} values were beyond [-{self.clip}, {self.clip}] "
                f"(largest magnitude {max(high, -low):.4g}) and were clipped; raise clip",
                ClippedValuesWarning,
                stacklevel=3,  # the caller of encode() or encoder()
            )
        scale = flat.dtype.type(2.0 ** self.precision_bits(contributors))  # a power of two: exact
        work = self._work(flat.dtype)
        uniforms = KeystreamReader(random_bytes(SEED_BYTES))  # one stream for the whole vector
        signed = self.signed_word

        def fill(start: int, segment: np.ndarray) -> None:
            words = segment.view(signed)
            for offset in range(0, words.size, _CHUNK):
                piece = words[offset : offset + _CHUNK]
                values = flat[start + offset : start + offset + piece.size]
                work.round_into(values, scale, self.clip, uniforms, piece)

        return fill

    def _work(self, dtype: np.dtype) -> _Rounding:
        """Work buffers reused across calls (fresh pages cost more than the arithmetic)."""
        work = self._scratch.get(np.dtype(dtype))
        if work is None:
            work = self._scratch[np.dtype(dtype)] = _Rounding(np.dtype(dtype))
        return work


def _as_numpy(values: torch.Tensor) -> np.ndarray:
    """A 1-D float32 (float64 for float64 input) numpy view of ``values`` on the CPU."""
    compute = torch.float64 if values.dtype == torch.float64 else torch.float32
    flat = values.detach().reshape(-1)
    if flat.device.type != "cpu" or flat.dtype != compute:
        flat = flat.to("cpu", compute)
    return flat.numpy()


class _Rounding:
    """Stochastic rounding of one chunk at a time, in buffers small enough to stay in cache.

    Every pass of the arithmetic reads and writes its chunk in the core's own cache; only the
    input and the output words cross to memory once. With whole-vector buffers each pass went to
    memory, and ranks sharing a machine stalled on its bandwidth (BENCHMARKS.md).
    """

    def __init__(self, dtype: np.dtype) -> None:
        self.scaled = np.empty(_CHUNK, dtype=dtype)
        self.rounded = np.empty(_CHUNK, dtype=dtype)
        self.uniform = np.empty(_CHUNK, dtype=dtype)
        self.up = np.empty(_CHUNK, dtype=bool)
        self.raw = bytearray(_CHUNK * 4 + KeystreamReader.SLACK)
        self.words = np.frombuffer(self.raw, dtype="<u4", count=_CHUNK)
        self.step = dtype.type(2.0**-_UNIFORM_BITS)

    def round_into(
        self,
        values: np.ndarray,
        scale: np.floating,
        clip: float,
        uniforms: KeystreamReader,
        out: np.ndarray,
    ) -> None:
        """``out = SR(clip(values) * scale)``, the uniforms read from ``uniforms``."""
        size = values.size
        scaled, rounded, uniform = self.scaled[:size], self.rounded[:size], self.uniform[:size]
        words, up = self.words[:size], self.up[:size]
        np.clip(values, -clip, clip, out=scaled)
        scaled *= scale
        np.floor(scaled, out=rounded)
        scaled -= rounded  # the fraction, exact (|scaled| < 2^40 fits the float's mantissa)
        uniforms.read_into(self.raw, 4 * size)
        words &= np.uint32((1 << _UNIFORM_BITS) - 1)
        uniform[...] = words
        uniform *= self.step  # uniforms in [0, 1) of 24 random bits each
        np.less(uniform, scaled, out=up)
        rounded += up  # up with probability = the fraction
        out[...] = rounded
