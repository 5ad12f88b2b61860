"""Default threshold and neighbourhood size, from the rules of Bonawitz et al. (CCS 2017) and
Bell et al. (CCS 2020).

Each client's secrets are Shamir-shared among its ``k`` neighbours and itself (``m = k + 1``
holders) with threshold ``t``. Two conditions pick ``(k, t)``:

* **Security.** A server that lies about who dropped out asks some holders for the self-mask
  share and others for the key share of the same client; honest holders answer only one of
  the two, while ``c`` colluding holders answer both. Learning both secrets then needs
  ``(t - c) + (t - c) <= m - c``, so ``2t > m + c`` makes it impossible. This is the
  complete-graph condition ``t > (n + n_C) / 2`` of Bonawitz et al. 2017 (Sec. 6, stated there as
  ``t > 2n/3`` with ``n_C < n/3`` colluding clients); ``t > c`` stops the colluders alone.
  In a sparse graph drawn at random, ``c`` is the number of corrupt neighbours of an honest client, ``Binomial(k, gamma)`` for a corrupt fraction ``gamma``; it must stay below
  the bound except with probability ``2^-security_bits / n`` (union over clients), as in the
  analysis of Bell et al. 2020 (Sec. 3-4).
* **Correctness.** A client that drops after sharing needs ``t`` live holders among its ``k``
  neighbours; with independent dropout rate ``delta`` that fails with probability
  ``P[Binomial(k, 1 - delta) < t]``, kept below ``2^-failure_bits / n``.

The smallest ``k`` satisfying both gives the sparse (SecAgg+) graph. When no ``k < n - 1`` does,
the complete graph (classic SecAgg) is used; if it misses the correctness target (small cohorts)
the security rule still sets ``t = floor((n + c) / 2) + 1`` with ``c = ceil(gamma (n - 1))``
(capped at n), and ``meets_targets`` is False: such a round tolerates only ``n - t`` dropouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "ParameterChoice",
    "corrupt_neighbours",
    "minimum_threshold",
    "recommend_parameters",
    "recommend_threshold",
]


@dataclass(frozen=True)
class ParameterChoice:
    """Recommended parameters for one cohort size.

    Attributes:
        neighbours: k, the number of neighbours of each client (``n - 1`` is the complete graph).
        threshold: t, the Shamir threshold and the minimum number of clients in every phase.
        meets_targets: whether both probability targets hold (False for the majority fallback).
    """

    neighbours: int
    threshold: int
    meets_targets: bool


def _log_binomial_pmf(k: int, p: float, i: int) -> float:
    if p <= 0.0:
        return 0.0 if i == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if i == k else -math.inf
    return (
        math.lgamma(k + 1)
        - math.lgamma(i + 1)
        - math.lgamma(k - i + 1)
        + i * math.log(p)
        + (k - i) * math.log1p(-p)
    )


@lru_cache(maxsize=4096)
def _binomial_pmf(k: int, p: float) -> tuple[float, ...]:
    """P[Binomial(k, p) = i] for i = 0..k (cached: a cohort's parameters ask for the same k and
    p once per client and per candidate neighbourhood size)."""
    return tuple(math.exp(_log_binomial_pmf(k, p, i)) for i in range(k + 1))


def _binomial_tail(k: int, p: float, lo: int, hi: int) -> float:
    """P[lo <= Binomial(k, p) <= hi]."""
    lo, hi = max(lo, 0), min(hi, k)
    return sum(_binomial_pmf(k, p)[lo : hi + 1]) if lo <= hi else 0


@lru_cache(maxsize=65536)
def corrupt_neighbours(
    n: int, neighbours: int, *, corrupt_fraction: float = 0.05, security_bits: int = 40
) -> int:
    """c: how many of a client's ``neighbours`` may collude with the server (module doc).

    On the complete graph this is ``ceil(corrupt_fraction * (n - 1))``; on a sparse graph it is
    the smallest c with ``P[Binomial(k, corrupt_fraction) > c] <= 2^-security_bits / n``, a union
    bound over the n neighbourhoods (Bell et al. 2020, Sec. 3-4).
    """
    if neighbours >= n - 1:
        return math.ceil(corrupt_fraction * (n - 1))
    budget = 2.0**-security_bits / n
    return next(
        c
        for c in range(neighbours + 1)
        if _binomial_tail(neighbours, corrupt_fraction, c + 1, neighbours) <= budget
    )


def minimum_threshold(
    n: int, neighbours: int, *, corrupt_fraction: float = 0.05, security_bits: int = 40
) -> int:
    """The smallest t with ``2t > k + 1 + c``: one story per client holds (module doc).

    May exceed ``k + 1`` (then no threshold is safe for this neighbourhood size).
    """
    c = corrupt_neighbours(
        n, neighbours, corrupt_fraction=corrupt_fraction, security_bits=security_bits
    )
    return (neighbours + 1 + c) // 2 + 1


def recommend_parameters(
    n: int,
    *,
    dropout_rate: float = 0.1,
    corrupt_fraction: float = 0.05,
    security_bits: int = 40,
    failure_bits: int = 20,
) -> ParameterChoice:
    """Pick the neighbourhood size and threshold for ``n`` clients (rules in the module doc).

    Args:
        n: number of clients in the round (>= 2).
        dropout_rate: expected fraction of clients that drop out, independently, in [0, 1).
        corrupt_fraction: fraction of clients that may collude with the server, in [0, 0.5).
        security_bits: the security conditions may fail with probability at most 2^-bits.
        failure_bits: a round may fail from dropouts with probability at most 2^-bits.

    Returns:
        The smallest neighbourhood meeting both targets, or the majority fallback.

    Example:
        >>> recommend_parameters(10)
        ParameterChoice(neighbours=9, threshold=6, meets_targets=False)
    """
    if n < 2:
        raise ValueError(f"n must be at least 2 clients, got {n}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must lie in [0, 1), got {dropout_rate}")
    if not 0.0 <= corrupt_fraction < 0.5:
        raise ValueError(f"corrupt_fraction must lie in [0, 0.5), got {corrupt_fraction}")
    failure_budget = 2.0**-failure_bits / n
    rule = {"corrupt_fraction": corrupt_fraction, "security_bits": security_bits}
    candidates = [*range(2, n - 1, 2), n - 1]
    for k in candidates:
        threshold = minimum_threshold(n, k, **rule)
        if threshold > k + 1:
            continue
        if _binomial_tail(k, 1.0 - dropout_rate, 0, threshold - 1) <= failure_budget:
            return ParameterChoice(neighbours=k, threshold=threshold, meets_targets=True)
    return ParameterChoice(
        neighbours=n - 1, threshold=min(n, minimum_threshold(n, n - 1, **rule)), meets_targets=False
    )


def recommend_threshold(
    n: int, neighbours: int, *, corrupt_fraction: float = 0.05, security_bits: int = 40
) -> int:
    """The security rule's threshold for a given neighbourhood size (module doc).

    Falls back to the strict majority of the ``neighbours + 1`` holders when the rule asks for
    more holders than there are.
    """
    if not 1 <= neighbours <= n - 1:
        raise ValueError(f"neighbours must lie in [1, {n - 1}], got {neighbours}")
    threshold = minimum_threshold(
        n, neighbours, corrupt_fraction=corrupt_fraction, security_bits=security_bits
    )
    return threshold if threshold <= neighbours + 1 else (neighbours + 1) // 2 + 1
