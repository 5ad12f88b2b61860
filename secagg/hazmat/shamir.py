"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2^31 - 1).

A 256-bit secret is cut into nine 30-bit limbs, each below the prime p = 2^31 - 1 (a Mersenne
prime), and every limb is shared with its own random polynomial of degree t - 1. Fewer than t
shares are independent of every limb (Shamir 1979), so they are independent of the secret. The
small field lets numpy evaluate all polynomials for all holders at once (products fit in 62 bits).

A share is the nine limb values at the holder's x-coordinate, 4 bytes each, little-endian. The
x-coordinate is the holder's public id (1 <= x < p) and travels beside the share, not inside it.

Lagrange coefficients at zero depend only on the responders' x-coordinates, so they are computed
once per responder set (vectorised, with an LRU cache) and reused for every secret those
responders reconstruct.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

import numpy as np

from secagg.hazmat._checks import require_bytes

__all__ = [
    "LIMBS",
    "PRIME",
    "SECRET_BYTES",
    "SHARE_BYTES",
    "lagrange_at_zero",
    "reconstruct",
    "reconstruct_many",
    "split",
]

PRIME = (1 << 31) - 1
SECRET_BYTES = 32
_LIMB_BITS = 30
LIMBS = -(-SECRET_BYTES * 8 // _LIMB_BITS)
SHARE_BYTES = 4 * LIMBS
_LIMB_MASK = (1 << _LIMB_BITS) - 1
_TOP_LIMB_BITS = SECRET_BYTES * 8 - _LIMB_BITS * (LIMBS - 1)
_P = np.uint64(PRIME)
_SHIFT = np.uint64(31)
_SHARE_DTYPE = np.dtype("<u4")


def _secret_to_limbs(secret: bytes) -> list[int]:
    value = int.from_bytes(require_bytes("secret", secret, SECRET_BYTES), "little")
    return [(value >> (_LIMB_BITS * i)) & _LIMB_MASK for i in range(LIMBS)]


def _limbs_to_secret(limbs: np.ndarray) -> bytes:
    values = [int(v) for v in limbs]
    if any(v > _LIMB_MASK for v in values) or values[-1] >> _TOP_LIMB_BITS:
        raise ValueError("shares are inconsistent: the reconstructed value is not a 32-byte secret")
    value = sum(v << (_LIMB_BITS * i) for i, v in enumerate(values))
    return value.to_bytes(SECRET_BYTES, "little")


def _check_xs(xs: Sequence[int]) -> tuple[int, ...]:
    xs = tuple(int(x) for x in xs)
    if len(set(xs)) != len(xs):
        raise ValueError("x-coordinates must be distinct")
    if any(not 1 <= x < PRIME for x in xs):
        raise ValueError(f"x-coordinates must lie in [1, {PRIME - 1}]")
    return xs


def _uniform_field_elements(count: int, random_bytes: Callable[[int], bytes]) -> np.ndarray:
    """``count`` independent uniform elements of GF(p), by rejection from 31-bit words."""
    values = np.frombuffer(random_bytes(4 * count), dtype="<u4") & np.uint32(PRIME)
    values = values.astype(np.uint64)
    rejected = np.flatnonzero(values == _P)
    while rejected.size:  # probability 2^-31 per element
        fresh = np.frombuffer(random_bytes(4 * rejected.size), dtype="<u4") & np.uint32(PRIME)
        values[rejected] = fresh
        rejected = rejected[fresh == np.uint32(PRIME)]
    return values


def _fold(values: np.ndarray, scratch: np.ndarray) -> None:
    """values <- (values & p) + (values >> 31), in place: congruent mod p since 2^31 = 1 (mod p)."""
    np.bitwise_and(values, _P, out=scratch)
    np.right_shift(values, _SHIFT, out=values)
    values += scratch


def split(
    secrets: Sequence[bytes],
    *,
    threshold: int,
    xs: Sequence[int],
    random_bytes: Callable[[int], bytes],
) -> list[list[bytes]]:
    """Share each secret t-of-len(xs).

    Args:
        secrets: 32-byte secrets.
        threshold: t, the number of shares that reconstruct (1 <= t <= len(xs)).
        xs: distinct x-coordinates of the holders, in [1, p - 1].
        random_bytes: cryptographic randomness for the polynomial coefficients.

    Returns:
        ``shares[h][s]``: the share of secret ``s`` for holder ``xs[h]`` (``SHARE_BYTES`` bytes).
    """
    xs = _check_xs(xs)
    if not 1 <= threshold <= len(xs):
        raise ValueError(
            f"threshold must lie in [1, {len(xs)}] for {len(xs)} holders, got {threshold}"
        )
    limbs = np.array([_secret_to_limbs(secret) for secret in secrets], dtype=np.uint64)
    count = limbs.size
    coefficients = _uniform_field_elements((threshold - 1) * count, random_bytes)
    coefficients = coefficients.reshape(threshold - 1, len(secrets), LIMBS)
    x = np.array(xs, dtype=np.uint64).reshape(-1, 1, 1)
    acc = np.zeros((len(xs), len(secrets), LIMBS), dtype=np.uint64)
    scratch = np.empty_like(acc)
    for coefficient in coefficients[::-1]:  # Horner: highest degree first
        acc += coefficient  # < 2^32 + 8
        acc *= x  # < 2^63 + 2^34: no overflow
        _fold(acc, scratch)
        _fold(acc, scratch)  # < 2^31 + 5, congruent mod p
    acc += limbs
    _fold(acc, scratch)
    acc[acc >= _P] -= _P
    encoded = acc.astype(_SHARE_DTYPE)
    return [[encoded[h, s].tobytes() for s in range(len(secrets))] for h in range(len(xs))]


@lru_cache(maxsize=4096)
def _lagrange_cached(xs: tuple[int, ...]) -> np.ndarray:
    x = np.array(xs, dtype=np.uint64)
    # denominators: prod_{j != i} (x_j - x_i), reduced pairwise along the row (log depth)
    diffs = (x[None, :] + _P - x[:, None]) % _P
    np.fill_diagonal(diffs, 1)
    numerators = np.array([x] * len(xs), dtype=np.uint64)
    np.fill_diagonal(numerators, 1)
    products = np.stack([numerators, diffs])
    while products.shape[-1] > 1:
        if products.shape[-1] % 2:
            products = np.concatenate([products, np.ones((*products.shape[:-1], 1), np.uint64)], -1)
        products = products[..., 0::2] * products[..., 1::2] % _P
    numerator, denominator = products[..., 0]
    inverses = np.array([pow(int(d), -1, PRIME) for d in denominator], dtype=np.uint64)
    coefficients = numerator * inverses % _P
    coefficients.flags.writeable = False
    return coefficients


def lagrange_at_zero(xs: Sequence[int]) -> np.ndarray:
    """Lagrange basis coefficients at x = 0 for the points ``xs`` (cached per point set)."""
    return _lagrange_cached(_check_xs(xs))


def _share_matrix(shares: Sequence[bytes]) -> np.ndarray:
    for share in shares:
        require_bytes("share", share, SHARE_BYTES)
    values = np.frombuffer(b"".join(shares), dtype=_SHARE_DTYPE).reshape(len(shares), LIMBS)
    if np.any(values >= PRIME):
        raise ValueError("a share holds a value outside the field")
    return values.astype(np.uint64)


def reconstruct_many(xs: Sequence[int], shares: Sequence[Sequence[bytes]]) -> list[bytes]:
    """Reconstruct several secrets shared among the same responders.

    Args:
        xs: the responders' x-coordinates; exactly t of them.
        shares: ``shares[s][i]`` is responder ``xs[i]``'s share of secret ``s``.

    Returns:
        The secrets. With exactly t shares any values interpolate, so callers authenticate the
        result (the protocol checks public keys and commitments).

    Raises:
        ValueError: malformed shares, repeated x-coordinates, or a result that is not a secret.
    """
    coefficients = lagrange_at_zero(xs)
    secrets = []
    for per_secret in shares:
        if len(per_secret) != len(coefficients):
            raise ValueError(f"need exactly {len(coefficients)} shares, got {len(per_secret)}")
        values = _share_matrix(per_secret)
        limbs = (values * coefficients[:, None] % _P).sum(axis=0) % _P
        secrets.append(_limbs_to_secret(limbs))
    return secrets


def reconstruct(shares: Mapping[int, bytes], *, threshold: int) -> bytes:
    """Reconstruct one secret from at least ``threshold`` shares keyed by x-coordinate.

    Exactly ``threshold`` shares are used (the smallest x-coordinates); the rest are ignored.

    Raises:
        ValueError: fewer than ``threshold`` shares, or malformed shares.
    """
    if threshold < 1:
        raise ValueError(f"threshold must be >= 1, got {threshold}")
    if len(shares) < threshold:
        raise ValueError(f"need {threshold} shares to reconstruct, got {len(shares)}")
    xs = sorted(shares)[:threshold]
    return reconstruct_many(xs, [[shares[x] for x in xs]])[0]
