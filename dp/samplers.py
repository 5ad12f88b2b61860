"""Integer noise samplers for distributed DP, driven by cryptographically secure random bits.

* **Discrete Gaussian** N_Z(0, sigma^2): exact. Canonne, Kamath, Steinke, "The Discrete
  Gaussian for Differential Privacy" (NeurIPS 2020), Alg. 1-3: Bernoulli(exp(-gamma)) for
  rational gamma from uniform integers only, a discrete Laplace proposal, and rejection. All
  arithmetic is on integers (numpy int64, with a Python-integer path for the astronomically rare
  values that would not fit), so the output distribution is exactly the discrete Gaussian with
  the rational variance parameter used; that parameter is the requested one rounded *up* to a
  dyadic rational, which only adds noise.
* **Skellam** Sk(lambda, lambda): inverse-CDF sampling with 128-bit uniforms against a CDF
  table computed in 60-digit decimal arithmetic (Bessel functions by Miller's backward
  recurrence) over +-(20 sd + 40). It is not exact: its total-variation distance to the true
  Skellam law is at most :attr:`SkellamTable.tv_bound` per draw (threshold rounding, at most
  2^-128 per table entry; the tails beyond the table, by a Chernoff bound; the decimal rounding),
  about 10^-34 for the variances used here. The ledger adds that distance times the number of
  draws to delta (:class:`dp.ledger.ClientLevelEntry`).

Randomness: every sampler takes ``random_bytes(n) -> bytes`` (``os.urandom`` by default); a
32-byte key drawn from it is expanded with AES-256-CTR into 64-bit words, so large vectors cost
one small draw from the operating system per batch. Uniform integers below ``m`` come from
63-bit words by rejection (no modulo bias). Nothing here uses a statistical RNG.
"""

from __future__ import annotations

import decimal
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from secagg.hazmat.prg import keystream
from secagg.randomness import RandomSource, system_random

__all__ = [
    "SkellamTable",
    "bernoulli_exp",
    "sample_discrete_gaussian",
    "sample_discrete_laplace",
    "sample_skellam",
    "skellam_table",
]

_SAFE = 1 << 62  # every integer the vectorised path forms stays below this


class _Words:
    """Uniform 64-bit words: AES-256-CTR keystream under keys drawn from ``random_bytes``."""

    def __init__(self, random_bytes: RandomSource) -> None:
        self._random_bytes = random_bytes

    def words(self, count: int) -> np.ndarray:
        if count == 0:
            return np.zeros(0, dtype=np.uint64)
        stream = keystream(self._random_bytes(32), 8 * count)
        return np.frombuffer(stream, dtype="<u8").astype(np.uint64)

    def below(self, bound: int, count: int) -> np.ndarray:
        """``count`` uniform integers in [0, bound) (1 <= bound < 2^62): masked words, rejection
        of those >= bound (no modulo bias)."""
        mask = np.uint64((1 << max(1, (bound - 1).bit_length())) - 1)
        out = np.empty(count, dtype=np.int64)
        filled = 0
        while filled < count:
            draws = self.words(count - filled) & mask
            draws = draws[draws < np.uint64(bound)]
            out[filled : filled + draws.size] = draws
            filled += draws.size
        return out

    def bits(self, count: int) -> np.ndarray:
        return (self.words(count) & np.uint64(1)).astype(bool)


_CHUNK = 52  # uniform bits per float comparison (exactly representable)
_MARGIN = 2.0**-50  # relative slack covering the float rounding of numerator / denominator


def _bernoulli(
    words: _Words, p: np.ndarray, numerator: np.ndarray, denominator: np.ndarray
) -> np.ndarray:
    """Bernoulli(numerator / denominator), exactly (0 <= numerator <= denominator < 2^62), given
    ``p``, the float value of the ratio.

    Success means U < numerator / denominator for a uniform U in [0, 1) whose bits are drawn 52
    at a time. With the first 52 bits, U lies in [k, k + 1) 2^-52; a float comparison with a
    relative margin of 2^-50 (the float ratio is within 2^-52 of the true one) decides every
    case but those with the ratio within about 2^-50 of that interval, which are settled exactly
    with integers (the next 52 bits of the ratio by long division, and so on).
    """
    k = (words.words(p.size) >> np.uint64(64 - _CHUNK)).astype(np.float64)
    low = k * 2.0**-_CHUNK
    out = low + 2.0**-_CHUNK <= p * (1 - _MARGIN)
    unsure = np.flatnonzero(~out & (low < p * (1 + _MARGIN)))
    for i in unsure:
        out[i] = _bernoulli_exactly(words, int(k[i]), int(numerator[i]), int(denominator[i]))
    return out


def _bernoulli_exactly(words: _Words, prefix: int, numerator: int, denominator: int) -> bool:
    """U < numerator / denominator for U whose first 52 bits are ``prefix``, with integers."""
    remainder = numerator
    while True:
        digits, remainder = divmod(remainder << _CHUNK, denominator)  # next 52 bits of p
        if prefix != digits:
            return prefix < digits
        prefix = int(words.words(1)[0] >> np.uint64(64 - _CHUNK))


def _bernoulli_exp_at_most_one(
    words: _Words, numerator: np.ndarray, denominator: np.ndarray
) -> np.ndarray:
    """Bernoulli(exp(-gamma)) for rational gamma = numerator / denominator in [0, 1]
    (Canonne, Kamath, Steinke 2020, Alg. 1, first case): draw Bernoulli(gamma / k) for
    k = 1, 2, ... until one fails; the result is 1 when the failing k is odd."""
    out = np.empty(numerator.size, dtype=bool)
    index = np.arange(numerator.size)
    gamma = numerator / denominator
    k = 1
    while index.size:
        if k > 64:  # denominator * k could leave int64 (probability below 1 / 64!)
            for i, n, d in zip(index, numerator, denominator, strict=True):
                out[i] = _bernoulli_exp_from(words, int(n), int(d), k)
            break
        success = _bernoulli(words, gamma / k, numerator, denominator * k)
        out[index[~success]] = k % 2 == 1
        index, gamma = index[success], gamma[success]
        numerator, denominator = numerator[success], denominator[success]
        k += 1
    return out


def _uniform_below(words: _Words, bound: int) -> int:
    """A uniform integer below a bound of any size, from 62-bit limbs, by rejection."""
    limbs = -(-bound.bit_length() // 62)
    while True:
        value = 0
        for word in words.words(limbs):
            value = (value << 62) | (int(word) >> 2)
        if value < (1 << (62 * limbs)) // bound * bound:
            return value % bound


def _bernoulli_exp_from(words: _Words, numerator: int, denominator: int, k: int) -> bool:
    """Alg. 1's loop for gamma = numerator / denominator <= 1, continued from ``k``, with
    Python integers."""
    while _uniform_below(words, denominator * k) < numerator:
        k += 1
    return k % 2 == 1


@lru_cache(maxsize=8)
def _inverse_e_bits(bits: int) -> int:
    """floor(e^-1 2^bits), from a correctly rounded decimal exponential with ample guard digits."""
    context = decimal.Context(prec=bits // 3 + 30)
    value = context.multiply(context.exp(decimal.Decimal(-1)), decimal.Decimal(2) ** bits)
    return int(value.to_integral_value(rounding=decimal.ROUND_FLOOR))


def _bernoulli_exp_minus_one(words: _Words, count: int) -> np.ndarray:
    """Exact Bernoulli(1/e): U < e^-1, comparing U's bits 52 at a time with e^-1's expansion
    (one comparison decides all but a 2^-52 fraction)."""
    first = _inverse_e_bits(_CHUNK)
    k = words.words(count) >> np.uint64(64 - _CHUNK)
    out = k < np.uint64(first)
    for i in np.flatnonzero(k == np.uint64(first)):
        chunks = 2
        while True:
            digits = _inverse_e_bits(_CHUNK * chunks) & ((1 << _CHUNK) - 1)
            prefix = int(words.words(1)[0] >> np.uint64(64 - _CHUNK))
            if prefix != digits:
                out[i] = prefix < digits
                break
            chunks += 1
    return out


def _bernoulli_exp_vectorised(
    words: _Words, numerator: np.ndarray, denominator: np.ndarray
) -> np.ndarray:
    """Bernoulli(exp(-numerator / denominator)) for int64 arrays below 2^62 (Alg. 1: floor(gamma)
    Bernoulli(1/e) trials that must all succeed, then one Bernoulli(exp(-frac(gamma))))."""
    whole, part = numerator // denominator, numerator % denominator
    alive = np.ones(numerator.size, dtype=bool)
    todo = np.flatnonzero(whole > 0)
    trials = np.zeros(numerator.size, dtype=np.int64)
    while todo.size:
        survived = _bernoulli_exp_minus_one(words, todo.size)
        alive[todo[~survived]] = False
        trials[todo] += 1
        todo = todo[survived & (trials[todo] < whole[todo])]
    out = np.zeros(numerator.size, dtype=bool)
    rest = np.flatnonzero(alive)
    out[rest] = _bernoulli_exp_at_most_one(words, part[rest], denominator[rest])
    return out


def _bernoulli_exp_exact(words: _Words, numerator: int, denominator: int) -> bool:
    """The same test with Python integers of any size (the rare path)."""
    whole, part = divmod(numerator, denominator)
    for _ in range(whole):
        if not _bernoulli_exp_minus_one(words, 1)[0]:
            return False
    return _bernoulli_exp_from(words, part, denominator, 1)


def bernoulli_exp(
    numerator: np.ndarray | int,
    denominator: np.ndarray | int,
    random_bytes: RandomSource = system_random,
) -> np.ndarray:
    """Exact Bernoulli(exp(-numerator / denominator)) for non-negative integers, elementwise
    (Canonne, Kamath, Steinke 2020, Alg. 1).

    Args:
        numerator, denominator: integer arrays (or scalars) with ``denominator >= 1``.
        random_bytes: the source of random bytes.

    Returns:
        A boolean array.
    """
    numerator = np.atleast_1d(np.asarray(numerator, dtype=object))
    denominator = np.broadcast_to(np.asarray(denominator, dtype=object), numerator.shape)
    if any(n < 0 for n in numerator.flat) or any(d < 1 for d in denominator.flat):
        raise ValueError("bernoulli_exp needs numerators >= 0 and denominators >= 1")
    words = _Words(random_bytes)
    small = np.array(
        [
            n < _SAFE and d < _SAFE // 64
            for n, d in zip(numerator.flat, denominator.flat, strict=True)
        ],
        dtype=bool,
    )
    out = np.empty(numerator.size, dtype=bool)
    if small.any():
        out[small] = _bernoulli_exp_vectorised(
            words,
            numerator.ravel()[small].astype(np.int64),
            denominator.ravel()[small].astype(np.int64),
        )
    for index in np.flatnonzero(~small):
        out[index] = _bernoulli_exp_exact(
            words, int(numerator.flat[index]), int(denominator.flat[index])
        )
    return out.reshape(numerator.shape)


def _geometric_minus_one(words: _Words, count: int) -> np.ndarray:
    """Successes of Bernoulli(1/e) before the first failure (P(V = v) = (1 - 1/e) e^-v)."""
    out = np.zeros(count, dtype=np.int64)
    todo = np.arange(count)
    while todo.size:
        success = _bernoulli_exp_minus_one(words, todo.size)
        out[todo[success]] += 1
        todo = todo[success]
    return out


def _discrete_laplace(words: _Words, scale: int, count: int) -> np.ndarray:
    """``count`` draws with P(y) proportional to exp(-|y| / scale), integer scale >= 1
    (Canonne, Kamath, Steinke 2020, Alg. 2 with s = 1)."""
    out = np.empty(count, dtype=np.int64)
    filled = 0
    while filled < count:
        need = count - filled
        # over-draw by the expected acceptance (>= 1/2 for the sign step, ~(1 - 1/e) for U)
        batch = max(16, int(need * 1.7))  # exp(-U / t) accepts ~63%, the sign step ~all
        u = words.below(scale, batch)
        keep = _bernoulli_exp_at_most_one(words, u, np.full(batch, scale, dtype=np.int64))
        u = u[keep]
        magnitude = u + scale * _geometric_minus_one(words, u.size)
        negative = words.bits(u.size)
        keep = ~(negative & (magnitude == 0))  # +0 and -0 would count zero twice
        values = np.where(negative, -magnitude, magnitude)[keep][:need]
        out[filled : filled + values.size] = values
        filled += values.size
    return out


def sample_discrete_laplace(
    scale: int, count: int, random_bytes: RandomSource = system_random
) -> np.ndarray:
    """``count`` exact draws of the discrete Laplace law P(y) ~ exp(-|y| / scale) (int64).

    Raises:
        ValueError: a scale that is not a positive integer.
    """
    if not (isinstance(scale, (int, np.integer)) and scale >= 1):
        raise ValueError(f"the discrete Laplace scale must be an integer >= 1, got {scale}")
    return _discrete_laplace(_Words(random_bytes), int(scale), count)


def _dyadic_variance(variance: float, bound: int) -> tuple[int, int]:
    """(a, b) with a / b >= variance, b a power of two as large as keeps the sampler's integers
    within int64 for draws up to ``bound`` standard deviations."""
    b = 1 << 20
    while b > 1:
        a = math.ceil(variance * b)
        t = math.isqrt(a // b) + 1
        magnitude = (bound * t + 64) * t * b + a
        if magnitude**2 < _SAFE and 2 * a * b * t * t * 64 < _SAFE:
            return a, b
        b //= 2
    return math.ceil(variance), 1


def sample_discrete_gaussian(
    sigma: float, count: int, random_bytes: RandomSource = system_random
) -> np.ndarray:
    """``count`` exact draws of N_Z(0, s^2): P(y) ~ exp(-y^2 / (2 s^2)) (int64), where s^2 is
    ``sigma**2`` rounded up to a dyadic rational (Canonne, Kamath, Steinke 2020, Alg. 3).

    The proposal is a discrete Laplace of scale t = floor(s) + 1, accepted with probability
    exp(-(|y| - s^2 / t)^2 / (2 s^2)), evaluated exactly on integers.
    """
    if sigma <= 0:
        return np.zeros(count, dtype=np.int64)
    words = _Words(random_bytes)
    a, b = _dyadic_variance(sigma**2, 64)
    t = math.isqrt(a // b) + 1  # floor(s) + 1 for s^2 = a / b
    out = np.empty(count, dtype=np.int64)
    filled = 0
    while filled < count:
        need = count - filled
        proposals = _discrete_laplace(words, t, max(16, int(need * 1.3)))
        magnitude = np.abs(proposals)
        # gamma = (|y| t b - a)^2 / (2 a b t^2)
        safe = magnitude < (math.isqrt(_SAFE) - a) // (t * b)
        accept = np.zeros(proposals.size, dtype=bool)
        if safe.any():
            offset = magnitude[safe] * (t * b) - a
            accept[safe] = _bernoulli_exp_vectorised(
                words, offset * offset, np.full(offset.size, 2 * a * b * t * t, dtype=np.int64)
            )
        for index in np.flatnonzero(~safe):
            offset = int(magnitude[index]) * t * b - a
            accept[index] = _bernoulli_exp_exact(words, offset * offset, 2 * a * b * t * t)
        values = proposals[accept][:need]
        out[filled : filled + values.size] = values
        filled += values.size
    return out


@dataclass(frozen=True, eq=False)
class SkellamTable:
    """The CDF of Sk(lambda, lambda) with variance ``2 lambda`` as 128-bit thresholds.

    Attributes:
        variance: 2 lambda.
        low: the first support point (the table covers ``low .. -low``).
        high_words, low_words: the upper and lower 64 bits of round(CDF(k) 2^128) for every
            support point but the last.
        tv_bound: an upper bound on the total-variation distance between one draw and the
            Skellam law.
    """

    variance: float
    low: int
    high_words: np.ndarray
    low_words: np.ndarray
    tv_bound: float


_DIGITS = 60


@lru_cache(maxsize=32)
def skellam_table(variance: float) -> SkellamTable:
    """The sampling table of Sk(lambda, lambda), 2 lambda = ``variance`` (cached).

    pmf(k) = e^-V I_|k|(V) with V = variance (modified Bessel functions): I_k(V) for
    k = 0..K by Miller's backward recurrence I_(k-1) = I_(k+1) + (2k / V) I_k, started far
    beyond K and normalised by I_0 + 2 sum I_k = e^V, in 60-digit decimal arithmetic.
    """
    sd = math.sqrt(variance)
    half = int(20 * sd) + 40
    context = decimal.Context(prec=_DIGITS)
    x = context.create_decimal(variance)
    start = half + int(10 * sd) + 200
    values = [decimal.Decimal(0)] * (start + 2)
    values[start] = context.create_decimal("1e-400")
    for k in range(start, 0, -1):
        values[k - 1] = context.add(
            values[k + 1], context.multiply(context.divide(2 * k, x), values[k])
        )
        if values[k - 1] > decimal.Decimal("1e300"):  # rescale: only ratios matter
            scale = values[k - 1]
            values = [context.divide(v, scale) for v in values]
    total = context.add(values[0], context.multiply(2, sum(values[1:], decimal.Decimal(0))))
    pmf = [context.divide(values[abs(k)], total) for k in range(-half, half + 1)]
    unit = decimal.Decimal(1 << 128)
    thresholds, cumulative = [], decimal.Decimal(0)
    for p in pmf[:-1]:
        cumulative = context.add(cumulative, p)
        value = context.multiply(cumulative, unit).to_integral_value()
        thresholds.append(min(int(value), (1 << 128) - 1))
    high = np.array([t >> 64 for t in thresholds], dtype=np.uint64)
    low = np.array([t & ((1 << 64) - 1) for t in thresholds], dtype=np.uint64)
    # the sampler gives the first point no mass from the left of the table and the last point
    # all of the right tail; each threshold is rounded by at most 2^-129; the decimal
    # arithmetic is good to far more than 10^-(digits - 10) per entry
    tail = _skellam_tail(variance, half + 1)
    tv = 2 * tail + len(pmf) * (2.0**-128 + 10.0 ** (-_DIGITS + 10))
    return SkellamTable(variance, -half, high, low, tv)


def _skellam_tail(variance: float, x: int) -> float:
    """An upper bound on P(X >= x) for X ~ Sk with variance V (Chernoff: E e^(theta X) =
    exp(V (cosh theta - 1)), theta = asinh(x / V)), doubled for float rounding."""
    theta = math.asinh(x / variance)
    return 2 * math.exp(variance * (math.cosh(theta) - 1) - theta * x)


def sample_skellam(
    variance: float, count: int, random_bytes: RandomSource = system_random
) -> np.ndarray:
    """``count`` draws of Skellam(lambda, lambda) with variance ``2 lambda = variance`` (int64),
    within :attr:`SkellamTable.tv_bound` of the exact law per draw (see the module docstring)."""
    if variance <= 0:
        return np.zeros(count, dtype=np.int64)
    table = skellam_table(float(variance))
    words = _Words(random_bytes)
    high, low = words.words(count), words.words(count)
    # index = number of thresholds <= (high, low), compared as 128-bit integers
    index = np.searchsorted(table.high_words, high, side="left")
    tied = np.flatnonzero(
        (index < table.high_words.size)
        & (table.high_words[np.minimum(index, table.high_words.size - 1)] == high)
    )
    for i in tied:  # the upper words match a threshold's (probability ~ 2^-64 per draw)
        j = int(index[i])
        while j < table.high_words.size and table.high_words[j] == high[i]:
            if table.low_words[j] <= low[i]:
                j += 1
            else:
                break
        index[i] = j
    return table.low + index.astype(np.int64)
