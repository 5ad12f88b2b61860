"""Numerical composition of privacy random variables (PRV) for the Poisson-sampled Gaussian.

Gopi, Lee, Wutschitz, "Numerical Composition of Differential Privacy" (NeurIPS 2021), with the
FFT composition of Koskela, Jälkö, Honkela (AISTATS 2020). The privacy loss of one step,
``Y = log(P(X) / Q(X))`` with ``X ~ P = (1 - q) N(0, s^2) + q N(1, s^2)`` and ``Q = N(0, s^2)``
(removal of one record), has the closed-form CDF

    F(t) = (1 - q) Phi(x(t) / s) + q Phi((x(t) - 1) / s),   x(t) = s^2 log((e^t - 1 + q) / q) + 1/2

for ``t > log(1 - q)`` (Gopi et al., Prop. B.4). Each step's distribution is put on a lattice of
width ``h`` (nearest point, then shifted to keep the true mean), all steps are composed by one
FFT power, and ``delta(eps) = E[(1 - e^(eps - Y))_+]`` is read off the composed distribution;
epsilon comes from bisection. Mass cut off in the single-step tails is charged to delta.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import integrate, special

__all__ = ["prv_epsilon"]

_TAIL = 1e-15


def _floor(q: float) -> float:
    """The smallest privacy loss: log(1 - q) (minus infinity without subsampling)."""
    return math.log1p(-q) if q < 1 else -math.inf


def _cdf(t: np.ndarray, q: float, sigma: float) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    above = t > _floor(q)
    safe = np.where(above, t, 1.0)
    x = sigma**2 * np.log((np.expm1(safe) + q) / q) + 0.5
    values = (1 - q) * special.ndtr(x / sigma) + q * special.ndtr((x - 1) / sigma)
    return np.where(above, values, 0.0)


def _mean(q: float, sigma: float) -> float:
    """E[Y] = KL(P || Q), by quadrature over x."""

    def integrand(x: float) -> float:
        loss = float(
            np.logaddexp(
                math.log1p(-q) if q < 1 else -math.inf, math.log(q) + (2 * x - 1) / (2 * sigma**2)
            )
        )
        density = (1 - q) * math.exp(-(x**2) / (2 * sigma**2)) + q * math.exp(
            -((x - 1) ** 2) / (2 * sigma**2)
        )
        return loss * density / (sigma * math.sqrt(2 * math.pi))

    return float(
        integrate.quad(integrand, -40 * sigma, 1 + 40 * sigma, limit=500, points=[0.0, 0.5, 1.0])[0]
    )


def _upper_bound(q: float, sigma: float, tail: float) -> float:
    """A t with P[Y > t] <= tail."""
    t = 1.0
    while 1.0 - _cdf(np.array([t]), q, sigma)[0] > tail:
        t *= 2
    return t


def _lower_bound(q: float, sigma: float, tail: float) -> float:
    """A t with P[Y < t] <= tail (exactly log(1 - q) under subsampling)."""
    if q < 1:
        return _floor(q)
    t = -1.0
    while _cdf(np.array([t]), q, sigma)[0] > tail:
        t *= 2
    return t


def _single_step(q: float, sigma: float, h: float, tail: float) -> tuple[np.ndarray, int, float]:
    """Lattice pmf of one step: (masses, index of the first lattice point, mass cut off above)."""
    low = _lower_bound(q, sigma, tail)
    high = _upper_bound(q, sigma, tail)
    first, last = math.floor(low / h), math.ceil(high / h)
    edges = (np.arange(first, last + 2) - 0.5) * h
    cdf = _cdf(edges, q, sigma)
    masses = np.diff(cdf)
    return np.clip(masses, 0.0, None), first, float(1.0 - cdf[-1] + cdf[0])


def prv_epsilon(
    compositions: Sequence[tuple[float, float, int]],
    delta: float,
    *,
    eps_error: float = 0.01,
) -> float:
    """An upper bound on the epsilon of composed Poisson-sampled Gaussian steps at ``delta``.

    The lattice pmf of each step is shifted so that its mean equals the true mean E[Y]; the
    rounding errors are then independent, mean zero and of range h, so by Hoeffding the composed
    loss exceeds the lattice one by ``eps_error`` with probability at most
    ``delta_error = exp(-2 eps_error^2 / (steps h^2))`` (Gopi et al. 2021, Sec. 5). The lattice
    width is chosen to make ``delta_error = delta / 100``; the result is
    ``eps_lattice(delta - delta_error) + eps_error``, as Opacus' PRV accountant reports.

    Args:
        compositions: ``(sampling_rate, noise_multiplier, steps)`` triples, composed together.
        delta: the target delta.
        eps_error: the discretisation allowance added to the estimate.
    """
    parts = [(q, s, k) for q, s, k in compositions if k > 0 and q > 0]
    if not parts:
        return 0.0
    if any(s <= 0 for _, s, _ in parts):
        return math.inf
    steps = sum(k for _, _, k in parts)
    delta_error = delta / 100
    width = eps_error * math.sqrt(2 / (steps * math.log(1 / delta_error)))
    shift, variance, singles, cut = 0.0, 0.0, [], 0.0
    for q, sigma, count in parts:
        masses, first, tail = _single_step(q, sigma, width, _TAIL / count)
        points = (first + np.arange(len(masses))) * width
        lattice_mean = float(masses @ points)
        shift += count * (_mean(q, sigma) - lattice_mean)
        variance += count * float(masses @ (points - lattice_mean) ** 2)
        singles.append((masses, first, count, lattice_mean))
        cut += count * tail
    center = sum(count * mean for *_, count, mean in singles)
    reach = max(max(abs(first), abs(first + len(m))) * width for m, first, *_ in singles)
    half = 12 * math.sqrt(variance) + 2 * reach + 1.0
    size = 1 << math.ceil(math.log2(2 * half / width))
    # the composed loss is centred near `center`: compose on a periodic lattice around it
    center_index = round(center / width)
    spectrum = np.ones(size // 2 + 1, dtype=np.complex128)
    for masses, first, count, _ in singles:
        lattice = np.zeros(size)
        lattice[(first + np.arange(len(masses))) % size] = masses
        spectrum *= np.fft.rfft(lattice) ** count
    composed = np.clip(np.fft.irfft(spectrum, n=size), 0.0, None)
    indices = center_index + ((np.arange(size) - center_index + size // 2) % size) - size // 2
    values = indices * width + shift
    target = delta - delta_error - cut
    if target <= 0:
        return math.inf

    def delta_at(eps: float) -> float:
        above = values > eps
        return float(composed[above] @ -np.expm1(eps - values[above]))

    if delta_at(0.0) <= target:
        return eps_error
    low, high = 0.0, 1.0
    while delta_at(high) > target:
        low, high = high, 2 * high
        if high > values.max():
            return math.inf
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if delta_at(middle) > target else (low, middle)
    return high + eps_error
