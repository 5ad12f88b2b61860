"""Floats to ring vectors and back: clipping, fixed point, stochastic rounding, weight packing.

A client with update ``x`` (floats) and weight ``w`` (its number of examples) sends the ring
vector ``[w, w * q_1, ..., w * q_d]`` where ``q = SR(clip(x) * 2^p)``: clip to ``[-c, c]``
elementwise (or to L2 norm ``C``, which implies ``|x_i| <= C``), scale by ``2^p``, and round
stochastically (down or up with the probabilities that make ``E[q] = clip(x) * 2^p``). The secure
sum of these vectors holds the numerator and denominator of the weighted mean, so the server
decodes ``sum_k w_k q_k / (2^p sum_k w_k)`` and never sees a single weight.

**Quantisation bound.** Each ``q_k`` is within 1 of ``clip(x_k) * 2^p``, so the decoded value is
within ``2^-p`` of the weighted mean of the clipped updates, elementwise, whatever the weights:
``|decoded - sum_k w_k clip(x_k) / sum_k w_k| < 2^-p`` (a convex combination of errors each
below ``2^-p``). And since stochastic rounding is unbiased, the decoded mean is unbiased.

**No wrap-around.** Every packed entry has magnitude at most ``W * Q`` with ``Q = ceil(c 2^p)``
and ``W = max_weight``; the sum of ``n`` of them at most ``n W Q``, which must fit the signed
ring: ``n W Q <= 2^(b-1) - 1``. :class:`FixedPointEncoder` refuses configurations that break
this, naming the largest precision, weight or the ring size that would fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from secagg.contribution import Contribution, Encoding, Term, WeightRule
from secagg.errors import ConfigurationError, InvalidInput
from secagg.hazmat.prg import keystream
from secagg.randomness import RandomSource, system_random
from secagg.ring import to_signed

__all__ = ["FixedPointEncoder", "stochastic_round", "uniform_floats"]


def uniform_floats(count: int, random_bytes: RandomSource = system_random) -> np.ndarray:
    """``count`` independent uniform floats in [0, 1) with 53 random bits each.

    One 32-byte key is drawn from ``random_bytes`` and expanded with AES-CTR, so large vectors
    cost one small draw from the operating system.
    """
    words = np.frombuffer(keystream(random_bytes(32), 8 * count), dtype="<u8")
    return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53


def stochastic_round(values: np.ndarray, random_bytes: RandomSource = system_random) -> np.ndarray:
    """Round each value down or up to an integer, up with probability equal to its fraction.

    Unbiased: ``E[stochastic_round(v)] = v``; the result is within 1 of ``v``. Returns int64.
    """
    values = np.asarray(values, dtype=np.float64)
    floor = np.floor(values)
    up = uniform_floats(values.size, random_bytes).reshape(values.shape) < (values - floor)
    return floor.astype(np.int64) + up


@dataclass(frozen=True)
class FixedPointEncoder:
    """Encodes weighted float updates into ring vectors whose sum decodes to the weighted mean.

    Attributes:
        num_clients: n, the most clients whose vectors are summed.
        max_weight: W, the largest weight a client may send (an error above, never clipped).
        clip: c, every element is clipped to [-c, c] (with ``l2_clip`` set, c must be >= it).
        precision_bits: p, the fixed-point scale is 2^p.
        ring_bits: b, the ring Z_{2^b} of the secure sum.
        l2_clip: optional C: the update is first scaled down to L2 norm at most C.

    Example:
        >>> encoder = FixedPointEncoder(num_clients=2, max_weight=10, clip=1.0, precision_bits=16)
        >>> a = encoder.encode(np.array([0.5, -0.25]), weight=3)
        >>> b = encoder.encode(np.array([0.1, 0.75]), weight=1)
        >>> np.round(encoder.decode((a + b) & np.uint64(encoder.ring_mask)), 3).tolist()
        [0.4, 0.0]
    """

    num_clients: int
    max_weight: int
    clip: float
    precision_bits: int
    ring_bits: int = 64
    l2_clip: float | None = None

    def __post_init__(self) -> None:
        if self.num_clients < 1:
            raise ConfigurationError(f"num_clients must be >= 1, got {self.num_clients}")
        if self.max_weight < 1:
            raise ConfigurationError(f"max_weight must be >= 1, got {self.max_weight}")
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise ConfigurationError(f"clip must be a positive finite number, got {self.clip}")
        if self.l2_clip is not None and not (0 < self.l2_clip <= self.clip):
            raise ConfigurationError(
                f"l2_clip must lie in (0, clip={self.clip}], got {self.l2_clip}"
            )
        if not 0 <= self.precision_bits <= 52:
            raise ConfigurationError(
                f"precision_bits must lie in [0, 52], got {self.precision_bits}"
            )
        if not 2 <= self.ring_bits <= 64:
            raise ConfigurationError(f"ring_bits must lie in [2, 64], got {self.ring_bits}")
        if self.bound > 2 ** (self.ring_bits - 1) - 1:
            raise ConfigurationError(self._wrap_message())

    @property
    def quantized_bound(self) -> int:
        """Q: the largest |q| a client can produce."""
        return math.ceil(self.clip * 2**self.precision_bits)

    @property
    def bound(self) -> int:
        """The largest magnitude any entry of the sum can reach: n * W * Q."""
        return self.num_clients * self.max_weight * self.quantized_bound

    @property
    def entry_bound(self) -> int:
        """The largest magnitude of one client's packed entry: W * Q (the ring's input bound)."""
        return self.max_weight * self.quantized_bound

    @property
    def ring_mask(self) -> int:
        """2^b - 1."""
        return (1 << self.ring_bits) - 1

    @property
    def error_bound(self) -> float:
        """Elementwise bound on |decoded mean - weighted mean of the clipped updates|: 2^-p."""
        return 2.0**-self.precision_bits

    def contribution(
        self, *, weights: WeightRule = WeightRule.EXAMPLES, **rules: Term
    ) -> Contribution:
        """This encoding as a session's contribution, with the weight rule and any other
        ``rules`` (``staleness``, ``model_version``, ``model_digest``) every client follows."""
        terms: dict[str, Term] = {
            "num_clients": self.num_clients,
            "max_weight": self.max_weight,
            "clip": float(self.clip),
            "precision_bits": self.precision_bits,
            "ring_bits": self.ring_bits,
            "weights": WeightRule(weights).value,
        }
        if self.l2_clip is not None:
            terms["l2_clip"] = float(self.l2_clip)
        return Contribution(Encoding.FIXED_POINT, {**terms, **rules})

    @classmethod
    def from_contribution(cls, contribution: Contribution) -> FixedPointEncoder:
        """The encoder a session's fixed-point contribution describes.

        Raises:
            ConfigurationError: another encoding, a missing term, or values that could wrap.
        """
        if contribution.encoding is not Encoding.FIXED_POINT:
            raise ConfigurationError(
                f"the session's contribution is {contribution.encoding.value}, not fixed-point"
            )
        l2_clip = contribution.optional("l2_clip")
        return cls(
            num_clients=contribution.integer("num_clients"),
            max_weight=contribution.integer("max_weight"),
            clip=contribution.number("clip"),
            precision_bits=contribution.integer("precision_bits"),
            ring_bits=contribution.integer("ring_bits"),
            l2_clip=None if l2_clip is None else contribution.number("l2_clip"),
        )

    @staticmethod
    def required_ring_bits(
        num_clients: int, max_weight: int, clip: float, precision_bits: int
    ) -> int:
        """The smallest ring that holds the sum without wrapping (value bits + 1 sign bit)."""
        bound = num_clients * max_weight * math.ceil(clip * 2**precision_bits)
        return bound.bit_length() + 1

    def _wrap_message(self) -> str:
        limit = 2 ** (self.ring_bits - 1) - 1
        per_client = limit // (self.num_clients * self.quantized_bound)
        precision = self.precision_bits
        while (
            precision > 0
            and self.num_clients * self.max_weight * math.ceil(self.clip * 2**precision) > limit
        ):
            precision -= 1
        needed = self.required_ring_bits(
            self.num_clients, self.max_weight, self.clip, self.precision_bits
        )
        fixes = [f"precision_bits <= {precision}"]
        if needed <= 64:
            fixes.append(f"ring_bits >= {needed}")
        if per_client >= 1:
            fixes.append(f"max_weight <= {per_client}")
        return (
            f"the sum of {self.num_clients} clients with weights up to {self.max_weight}, clip "
            f"{self.clip} and {self.precision_bits} bits of precision can reach {self.bound}, "
            f"beyond the {self.ring_bits}-bit ring (it could wrap around); use "
            + " or ".join(fixes)
        )

    def encode(
        self, update: ArrayLike, *, weight: int, random_bytes: RandomSource = system_random
    ) -> np.ndarray:
        """Clip, quantise and pack one client's update as ``[w, w*q_1, ..., w*q_d]`` mod 2^b.

        Args:
            update: the float update (any shape; flattened).
            weight: w, a positive integer at most ``max_weight`` (usually the example count).
            random_bytes: randomness for stochastic rounding (``os.urandom`` by default).

        Returns:
            A ``uint64`` vector of length d + 1, reduced modulo 2^b.

        Raises:
            InvalidInput: a weight outside [1, max_weight], or non-finite values.
        """
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, np.integer))
            or not 1 <= weight <= self.max_weight
        ):
            raise InvalidInput(
                f"weight must be an integer in [1, max_weight={self.max_weight}], got {weight!r}; "
                "raise max_weight (it is never clipped silently)"
            )
        values = np.asarray(update, dtype=np.float64).ravel()
        if not np.all(np.isfinite(values)):
            raise InvalidInput("the update holds NaN or infinite values; check the local training")
        if self.l2_clip is not None:
            norm = float(np.linalg.norm(values))
            if norm > self.l2_clip:
                values = values * (self.l2_clip / norm)
        values = np.clip(values, -self.clip, self.clip)
        quantized = stochastic_round(values * 2.0**self.precision_bits, random_bytes)
        packed = np.empty(values.size + 1, dtype=np.int64)
        packed[0] = weight
        packed[1:] = quantized * int(weight)
        return packed.astype(np.uint64) & np.uint64(self.ring_mask)

    def decode(self, total: np.ndarray) -> np.ndarray:
        """The weighted mean (float64, length d) from the ring sum of encoded vectors.

        Raises:
            InvalidInput: the weight total is not positive (nothing, or garbage, was summed).
        """
        signed = to_signed(np.asarray(total), self.ring_bits)
        weight_total = int(signed[0])
        if weight_total < 1:
            raise InvalidInput(f"the summed weight is {weight_total}; no client was aggregated")
        return signed[1:].astype(np.float64) / (weight_total * 2.0**self.precision_bits)

    def decode_weight(self, total: np.ndarray) -> int:
        """The sum of the contributors' weights, from the ring sum."""
        return int(to_signed(np.asarray(total)[:1], self.ring_bits)[0])
