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

DEFAULT_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256]
)


def _log_add(a: float, b: float) -> float:
    return float(np.logaddexp(a, b))


def _log_sub(a: float, b: float) -> float:
    """log(exp(a) - exp(b)) for a >= b."""
    if b == -math.inf:
        return a
    if a == b:
        return -math.inf
    return a + math.log1p(-math.exp(b - a))


def _log_erfc(x: float) -> float:
    return float(np.log(special.erfc(x))) if x < 25 else float(np.log(special.erfcx(x)) - x * x)


def _log_a_integer(q: float, sigma: float, alpha: int) -> float:
    log_a = -math.inf
    for i in range(alpha + 1):
        term = (
            math.log(special.binom(alpha, i))
            + i * math.log(q)
            + (alpha - i) * math.log1p(-q)
            + (i * i - i) / (2 * sigma**2)
        )
        log_a = _log_add(log_a, term)
    return log_a


def _log_a_fractional(q: float, sigma: float, alpha: float) -> float:
    log_a0 = log_a1 = -math.inf
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    i = 0
    while True:
        coefficient = special.binom(alpha, i)
        log_coefficient = math.log(abs(coefficient))
        j = alpha - i
        log_t0 = log_coefficient + i * math.log(q) + j * math.log1p(-q)
        log_t1 = log_coefficient + j * math.log(q) + i * math.log1p(-q)
        log_e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2 * sigma**2) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma**2) + log_e1
        if coefficient > 0:
            log_a0, log_a1 = _log_add(log_a0, log_s0), _log_add(log_a1, log_s1)
        else:
            log_a0, log_a1 = _log_sub(log_a0, log_s0), _log_sub(log_a1, log_s1)
        i += 1
        if max(log_s0, log_s1) < -30:
            return _log_add(log_a0, log_a1)


def gaussian_rdp(noise_multiplier: float, orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    """Gaussian mechanism with sensitivity 1 and noise ``noise_multiplier``: alpha / (2 sigma^2)."""
    if noise_multiplier == 0:
        return np.full(len(orders), math.inf)
    return np.asarray(orders, dtype=np.float64) / (2 * noise_multiplier**2)


def sampled_gaussian_rdp(
    sampling_rate: float, noise_multiplier: float, orders: Sequence[float] = DEFAULT_ORDERS
) -> np.ndarray:
    """Poisson-sampled Gaussian mechanism (Mironov, Talwar, Zhang 2019, Sec. 3.3)."""
    q, sigma = sampling_rate, noise_multiplier
    if q == 0:
        return np.zeros(len(orders))
    if sigma == 0:
        return np.full(len(orders), math.inf)
    if q == 1.0:
        return gaussian_rdp(sigma, orders)
    values = []
    for alpha in orders:
        if math.isinf(alpha):
            values.append(math.inf)
            continue
        log_a = (
            _log_a_integer(q, sigma, int(alpha))
            if float(alpha).is_integer()
            else _log_a_fractional(q, sigma, alpha)
        )
        values.append(log_a / (alpha - 1))
    return np.asarray(values)


def subsampled_rdp(
    sampling_rate: float, rdp: Callable[[int], float], orders: Sequence[float] = DEFAULT_ORDERS
) -> np.ndarray:
    """Upper bound on the RDP of any mechanism under Poisson subsampling (Zhu, Wang 2019, Thm. 6).

    ``rdp(alpha)`` is the unsampled mechanism's RDP at integer ``alpha >= 2``. The bound holds at
    integer orders; a fractional order uses the next integer (RDP is non-decreasing in the order).
    The result is also capped by the unsampled RDP.
    """
    q = sampling_rate
    results = []
    for order in orders:
        alpha = math.ceil(order)
        unsampled = rdp(max(alpha, 2))
        if q >= 1.0:
            results.append(unsampled)
            continue
        if q == 0.0:
            results.append(0.0)
            continue
        alpha = max(alpha, 2)
        log_terms = [math.log((1 - q) ** (alpha - 1) * (alpha * q - q + 1))]
        log_terms.append(
            math.log(special.comb(alpha, 2))
            + 2 * math.log(q)
            + (alpha - 2) * math.log1p(-q)
            + rdp(2)
        )
        for ell in range(3, alpha + 1):
            log_terms.append(
                math.log(3)
                + float(
                    special.gammaln(alpha + 1)
                    - special.gammaln(ell + 1)
                    - special.gammaln(alpha - ell + 1)
                )
                + (alpha - ell) * math.log1p(-q)
                + ell * math.log(q)
                + (ell - 1) * rdp(ell)
            )
        bound = float(special.logsumexp(log_terms)) / (alpha - 1)
        results.append(min(bound, unsampled))
    return np.asarray(results)


def skellam_rdp(
    alpha: float, *, l1_sensitivity: float, l2_sensitivity: float, variance: float
) -> float:
    """RDP of the multidimensional Skellam mechanism whose noise has ``variance`` per coordinate
    (Agarwal, Kairouz, Liu 2021, Sec. 3), in the integer (scaled) domain."""
    d1, d2, v = l1_sensitivity, l2_sensitivity, variance
    return alpha * d2**2 / (2 * v) + min(
        ((2 * alpha - 1) * d2**2 + 6 * d1) / (4 * v**2), 3 * d1 / (2 * v)
    )


def discrete_gaussian_rdp(
    alpha: float,
    *,
    l1_sensitivity: float,
    l2_sensitivity: float,
    local_sigma: float,
    num_clients: int,
    dimension: int,
) -> float:
    """RDP of the sum of ``num_clients`` discrete Gaussians N_Z(0, local_sigma^2) per coordinate
    (Kairouz, Liu, Steinke 2021, Prop. 14; tau from Thm. 1), in the integer (scaled) domain."""
    n, sigma = num_clients, local_sigma
    tau = 10 * sum(math.exp(-2 * (math.pi * sigma) ** 2 * k / (k + 1)) for k in range(1, n))
    l2_scale = l2_sensitivity / (math.sqrt(n) * sigma)
    l1_scale = l1_sensitivity / (math.sqrt(n) * sigma)
    return min(
        alpha / 2 * l2_scale**2 + tau * dimension,
        alpha / 2 * (l2_scale**2 + 2 * l1_scale * tau + tau**2 * dimension),
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
