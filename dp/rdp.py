"""Rényi differential privacy of the mechanisms the project uses; pure numpy/scipy.

Every function returns the RDP epsilon at the given orders for ONE application of the mechanism
(compose by adding, since RDP composes additively).

* Sampled Gaussian: Mironov, Talwar, Zhang, "Rényi Differential Privacy of the Sampled Gaussian
  Mechanism" (2019), Sec. 3.3: exact for integer orders, the series of Sec. 3.3 for fractional
  orders.
* Any mechanism under Poisson subsampling: Zhu and Wang, "Poisson Subsampled Rényi Differential
  Privacy" (ICML 2019), Thm. 6 (upper bound, integer orders).
* Skellam: Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated
  Learning" (NeurIPS 2021), the multidimensional RDP bound of Sec. 3.
* Distributed discrete Gaussian: Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian
  Mechanism for Federated Learning with Secure Aggregation" (ICML 2021), Prop. 14 with the
  inflation term tau of Thm. 1.
* Conversion to (epsilon, delta): Balle et al., "Hypothesis Testing Interpretations and Renyi
  Differential Privacy" (AISTATS 2020), Thm. 21 (what Opacus uses), or the classic
  ``rdp + log(1/delta) / (alpha - 1)`` of Mironov (2017), Prop. 3.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
from scipy import special

__all__ = [
    "DEFAULT_ORDERS",
    "discrete_gaussian_rdp",
    "epsilon_from_rdp",
    "gaussian_rdp",
    "rounded_norm_bounds",
    "sampled_gaussian_rdp",
    "skellam_rdp",
    "subsampled_rdp",
]


def _default_orders() -> tuple[float, ...]:
    fractional = [1 + x / 10.0 for x in range(1, 100)]
    integers = list(range(11, 513))
    # beyond 512, 16 orders per doubling up to 4096: the optimum sits there only for epsilons
    # below ~0.02 (at delta 1e-5), and a missing order only loosens the (still valid) bound
    sparse = sorted({round(512 * 2 ** (k / 16)) for k in range(1, 49)})
    return tuple(float(o) for o in fractional + integers + sparse)


DEFAULT_ORDERS: tuple[float, ...] = _default_orders()
"""Every order the accountants minimise over: 1.1 to 10.9 in steps of 0.1, every integer from
11 to 512 (subsampled mechanisms often have their optimum between 64 and 127, where a sparse
grid loses up to half of epsilon), then 16 orders per doubling up to 4096."""


def _logsumexp(values: np.ndarray) -> float:
    """log(sum(exp(values))), without overflow (scipy's version costs more per call)."""
    top = float(np.max(values))
    if not math.isfinite(top):
        return top
    return top + math.log(float(np.sum(np.exp(values - top))))


def _log_binomials(n: float, k: np.ndarray) -> np.ndarray:
    """log C(n, k) for integers 0 <= k <= n, without overflow."""
    return special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)


@lru_cache(maxsize=8)
def _integer_indices(alphas: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ``i = 0..alpha`` of every alpha, flattened: alpha, i, and each alpha's first index."""
    sizes = np.asarray(alphas, dtype=np.int64) + 1
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    alpha = np.repeat(np.asarray(alphas, dtype=np.float64), sizes)
    i = np.arange(int(sizes.sum()), dtype=np.float64) - np.repeat(starts, sizes)
    return alpha, i, starts


@lru_cache(maxsize=16)
def _integer_series(q: float, alphas: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sigma-free part of the integer-order series, for all ``alphas`` at once.

    Returns the flattened ``log C(alpha, i) + i log q + (alpha - i) log(1 - q)`` for
    ``i = 0..alpha`` of every alpha, the matching ``(i^2 - i) / 2``, and each alpha's first index.
    Cached by sampling rate: a calibration evaluates many noise levels at one rate.
    """
    log_q, log_1mq = math.log(q), math.log1p(-q)
    alpha, i, starts = _integer_indices(alphas)
    base = _log_binomials(alpha, i) + i * log_q + (alpha - i) * log_1mq
    return base, (i * i - i) / 2, starts


def _log_a_integers(q: float, sigma: float, alphas: tuple[int, ...]) -> np.ndarray:
    """log A_alpha = log sum_i C(alpha, i) q^i (1 - q)^(alpha - i) e^((i^2 - i) / (2 sigma^2))
    (Mironov, Talwar, Zhang 2019, Sec. 3.3) at integer orders, summed in log space (stable for q
    up to 1) and vectorised over all orders."""
    base, quadratic, starts = _integer_series(q, alphas)
    terms = base + quadratic / sigma**2
    tops = np.maximum.reduceat(terms, starts)
    sizes = np.diff(np.append(starts, terms.size))
    sums = np.add.reduceat(np.exp(terms - np.repeat(tops, sizes)), starts)
    return tops + np.log(sums)


def _log_a_fractionals(q: float, sigma: float, alphas: np.ndarray) -> np.ndarray:
    """log A_alpha at fractional orders: the two-sided series of Mironov, Talwar, Zhang 2019,
    Sec. 3.3 (as Opacus and TF Privacy sum it, up to the first term below e^-30), vectorised over
    orders and terms, with log|C(alpha, i)| from log-gamma and log erfc from log_ndtr."""
    log_q, log_1mq = math.log(q), math.log1p(-q)
    z0 = sigma**2 * (log_1mq - log_q) + 0.5
    alpha = np.asarray(alphas, dtype=np.float64)[:, None]
    terms = 64
    while True:
        i = np.arange(terms, dtype=np.float64)[None, :]
        j = alpha - i
        log_coefficient = (
            special.gammaln(alpha + 1) - special.gammaln(i + 1) - special.gammaln(j + 1)
        )
        sign = special.gammasgn(alpha + 1) * special.gammasgn(j + 1)
        # log(erfc(x) / 2) = log_ndtr(-sqrt(2) x)
        log_s0 = (
            log_coefficient
            + i * log_q
            + j * log_1mq
            + (i * i - i) / (2 * sigma**2)
            + special.log_ndtr((z0 - i) / sigma)
        )
        log_s1 = (
            log_coefficient
            + j * log_q
            + i * log_1mq
            + (j * j - j) / (2 * sigma**2)
            + special.log_ndtr((j - z0) / sigma)
        )
        small = np.maximum(log_s0, log_s1) < -30
        if small.any(axis=1).all():
            break
        terms *= 2
    last = np.argmax(small, axis=1)  # the series stops after its first small term
    used = i <= last[:, None]
    both = np.where(used, np.concatenate([[log_s0], [log_s1]]), -np.inf)
    top = np.max(both, axis=(0, 2))
    total = np.sum(sign * np.exp(both - top[None, :, None]), axis=(0, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return top + np.log(total)


def gaussian_rdp(noise_multiplier: float, orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    """Gaussian mechanism with sensitivity 1 and noise ``noise_multiplier``: alpha / (2 sigma^2)."""
    if noise_multiplier == 0:
        return np.full(len(orders), math.inf)
    return np.asarray(orders, dtype=np.float64) / (2 * noise_multiplier**2)


def sampled_gaussian_rdp(
    sampling_rate: float, noise_multiplier: float, orders: Sequence[float] = DEFAULT_ORDERS
) -> np.ndarray:
    """Poisson-sampled Gaussian mechanism (Mironov, Talwar, Zhang 2019, Sec. 3.3), for sampling
    rates in [0, 1]."""
    q, sigma = sampling_rate, noise_multiplier
    if not 0 <= q <= 1:
        raise ValueError(f"the sampling rate must lie in [0, 1], got {q}")
    if q == 0:
        return np.zeros(len(orders))
    if sigma == 0:
        return np.full(len(orders), math.inf)
    if q == 1.0:
        return gaussian_rdp(sigma, orders)
    alphas = np.asarray(orders, dtype=np.float64)
    log_a = np.full(alphas.size, math.inf)
    integer = np.isfinite(alphas) & (alphas == np.floor(alphas))
    if integer.any():
        log_a[integer] = _log_a_integers(q, sigma, tuple(int(a) for a in alphas[integer]))
    fractional = np.isfinite(alphas) & ~integer
    if fractional.any():
        log_a[fractional] = _log_a_fractionals(q, sigma, alphas[fractional])
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(alphas), np.maximum(log_a, 0.0) / (alphas - 1), math.inf)


def subsampled_rdp(
    sampling_rate: float,
    rdp: Callable[[np.ndarray], np.ndarray],
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> np.ndarray:
    """Upper bound on the RDP of any mechanism under Poisson subsampling (Zhu, Wang 2019, Thm. 6).

    ``rdp(alphas)`` is the unsampled mechanism's RDP at an array of orders. The bound holds at
    integer orders; a fractional order uses the next integer (RDP is non-decreasing in the
    order). The result is also capped by the unsampled RDP at the order itself. Every term is
    summed in log space, so sampling rates up to 1 are exact.
    """
    q = sampling_rate
    if not 0 <= q <= 1:
        raise ValueError(f"the sampling rate must lie in [0, 1], got {q}")
    exact = np.asarray(orders, dtype=np.float64)
    # subsampling never hurts: the result is capped by the unsampled RDP at the order itself
    # (quasi-convexity of the Renyi divergence)
    cap = np.asarray(rdp(exact), dtype=np.float64)
    if q == 0.0:
        return np.zeros(len(exact))
    if q == 1.0:
        return cap
    alphas = np.maximum(np.ceil(exact), 2.0)
    largest = int(alphas.max())
    ells = np.arange(2, largest + 1, dtype=np.float64)
    unsampled = np.asarray(rdp(ells), dtype=np.float64)  # at orders 2, 3, ..., largest
    log_q, log_1mq = math.log(q), math.log1p(-q)
    results = np.empty(len(alphas))
    for index, alpha in enumerate(alphas):
        a = int(alpha)
        ell = ells[: a - 1]  # 2..alpha
        terms = (
            _log_binomials(alpha, ell)
            + (alpha - ell) * log_1mq
            + ell * log_q
            + (ell - 1) * unsampled[: a - 1]
        )
        terms[1:] += math.log(3)  # the ell >= 3 terms carry the factor 3
        first = (alpha - 1) * log_1mq + math.log(alpha * q - q + 1)
        bound = _logsumexp(np.append(terms, first)) / (alpha - 1)
        results[index] = min(bound, float(cap[index]))
    return results


def skellam_rdp(
    alpha: float | np.ndarray, *, l1_sensitivity: float, l2_sensitivity: float, variance: float
) -> float | np.ndarray:
    """RDP of the multidimensional Skellam mechanism whose noise has ``variance`` per coordinate
    (Agarwal, Kairouz, Liu 2021, Sec. 3), in the integer (scaled) domain; ``alpha`` may be an
    array of orders."""
    d1, d2, v = l1_sensitivity, l2_sensitivity, variance
    return alpha * d2**2 / (2 * v) + np.minimum(
        ((2 * alpha - 1) * d2**2 + 6 * d1) / (4 * v**2), 3 * d1 / (2 * v)
    )


def discrete_gaussian_rdp(
    alpha: float | np.ndarray,
    *,
    l1_sensitivity: float,
    l2_sensitivity: float,
    local_sigma: float,
    num_clients: int,
    dimension: int,
) -> float | np.ndarray:
    """RDP of the sum of ``num_clients`` discrete Gaussians N_Z(0, local_sigma^2) per coordinate
    (Kairouz, Liu, Steinke 2021, Prop. 14; tau from Thm. 1), in the integer (scaled) domain;
    ``alpha`` may be an array of orders."""
    n, sigma = num_clients, local_sigma
    tau = 10 * sum(math.exp(-2 * (math.pi * sigma) ** 2 * k / (k + 1)) for k in range(1, n))
    l2_scale = l2_sensitivity / (math.sqrt(n) * sigma)
    l1_scale = l1_sensitivity / (math.sqrt(n) * sigma)
    return np.minimum(
        np.minimum(
            alpha / 2 * l2_scale**2 + tau * dimension,
            alpha / 2 * (l2_scale**2 + 2 * l1_scale * tau + tau**2 * dimension),
        ),
        alpha / 2 * (l2_scale + math.sqrt(dimension) * tau) ** 2,
    )


def rounded_norm_bounds(l2_norm: float, dimension: int, beta: float) -> tuple[float, float]:
    """(L1, L2) sensitivity bounds after conditional randomized rounding to the integer grid.

    Kairouz, Liu, Steinke 2021, Thm. 1: rounding keeps the L2 norm within
    ``min(c + sqrt(d), sqrt(c^2 + d/4 + sqrt(2 log(1/beta)) (c + sqrt(d)/2)))``; on integers the
    L1 norm is at most ``min(sqrt(d) * L2, L2^2)``.
    """
    l2 = l2_norm + math.sqrt(dimension)
    if beta > 0:
        squared = (
            l2_norm**2
            + dimension / 4
            + math.sqrt(2 * math.log(1 / beta)) * (l2_norm + math.sqrt(dimension) / 2)
        )
        l2 = min(l2, math.sqrt(squared))
    return l2 * min(math.sqrt(dimension), l2), l2


def epsilon_from_rdp(
    rdp: np.ndarray,
    delta: float,
    orders: Sequence[float] = DEFAULT_ORDERS,
    *,
    classic: bool = False,
) -> tuple[float, float]:
    """The smallest epsilon over the orders for (epsilon, delta)-DP, and the order achieving it.

    ``classic=False`` uses Balle et al. 2020, Thm. 21:
    ``eps = rdp - (log(delta) + log(alpha)) / (alpha - 1) + log((alpha - 1) / alpha)``;
    ``classic=True`` uses Mironov 2017, Prop. 3: ``eps = rdp + log(1 / delta) / (alpha - 1)``.
    """
    alphas = np.asarray(orders, dtype=np.float64)
    rdp = np.asarray(rdp, dtype=np.float64)
    if not np.any(rdp):  # no mechanism ran: nothing is spent (the conversion would add slack)
        return 0.0, float(alphas[-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        if classic:
            eps = rdp + math.log(1 / delta) / (alphas - 1)
        else:
            eps = (
                rdp
                - (math.log(delta) + np.log(alphas)) / (alphas - 1)
                + np.log((alphas - 1) / alphas)
            )
    eps = np.where(np.isnan(eps), np.inf, eps)
    best = int(np.argmin(eps))
    return max(0.0, float(eps[best])), float(alphas[best])
