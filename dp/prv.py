"""Numerical composition of privacy random variables (PRV) for the Poisson-sampled Gaussian.

Gopi, Lee, Wutschitz, "Numerical Composition of Differential Privacy" (NeurIPS 2021), with the
FFT composition of Koskela, Jälkö, Honkela (AISTATS 2020). The privacy loss of one step,
``Y = log(P(X) / Q(X))`` with ``X ~ P = (1 - q) N(0, s^2) + q N(1, s^2)`` and ``Q = N(0, s^2)``
(removal of one record, the direction Opacus' PRV accountant composes), has the closed-form CDF

    F(t) = (1 - q) Phi(x(t) / s) + q Phi((x(t) - 1) / s),   x(t) = s^2 log((e^t - 1 + q) / q) + 1/2

for ``t > log(1 - q)`` (Gopi et al., Prop. B.4).

How one query is answered, and what each approximation costs (every cost is charged, so the
result stays an upper bound on epsilon):

1. **Lattice.** Each step's loss is rounded to the nearest point of ``h Z``; the rounding errors
   of the ``K`` steps are independent, of range ``h`` and, after shifting by their mean, of mean
   zero, so by Hoeffding their sum exceeds ``eps_error`` with probability at most
   ``exp(-2 eps_error^2 / (K h^2))`` (Gopi et al. 2021, Sec. 5). ``h`` is chosen so that this is
   ``delta / 100`` (rounded down to a quarter power of two, so that queries with similar step
   counts share the cached single-step lattices), and the result is
   ``eps_lattice(delta - charges) + eps_error``, as Opacus reports its upper bound.
2. **Truncation.** A single step's loss is cut above the point where its survival function is
   ``1e-20`` (and below at the same level without subsampling); the union bound charges
   ``K * 2e-20`` to delta.
3. **Bounded grid.** The composition is computed on a periodic lattice of ``N`` points, one FFT
   power per distinct ``(q, sigma)`` (never step by step). Mass above the window wraps to lower
   points and is undercounted: its probability is bounded by a Chernoff bound (an upper bound
   on the lattice steps' moment-generating function, from 1,024 coarse bins) and charged to
   delta (``delta / 1000``). Mass below the window wraps upward, which can only overstate
   delta. ``N`` is capped (``2^21`` points, 32 MiB per complex array); a loss distribution too
   wide for the cap (epsilons far above any useful target) gets a coarser lattice and a
   correspondingly larger allowance, still an upper bound.
4. **Round-off.** The FFT's floating-point error is charged as ``16 N`` machine epsilons of
   probability mass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import fft, integrate, special

__all__ = ["MAX_POINTS", "prv_epsilon"]

MAX_POINTS = 1 << 21
"""The largest composition lattice (points); wider loss distributions get a coarser lattice."""

_TAIL = 1e-20  # single-step truncation, per side
_Z_TAIL = float(-special.ndtri(_TAIL))  # Phi(-z) = _TAIL
_LAMBDAS = np.geomspace(1e-3, 1e3, 49)  # Chernoff exponents tried for the window bounds
_COARSE_BINS = 1024
_CACHED_SPECTRUM = (
    1 << 18
)  # points  # bins of the single-step pmf for the moment-generating function


def _x_of(t: np.ndarray, q: float, sigma: float) -> np.ndarray:
    """x(t) for t above the floor log(1 - q), without overflow for large t."""
    with np.errstate(over="ignore", divide="ignore"):
        small = np.log(np.expm1(np.minimum(t, 0.0)) + q)
        large = np.maximum(t, 0.0) + np.log1p((q - 1) * np.exp(-np.maximum(t, 0.0)))
    return sigma**2 * (np.where(t > 0, large, small) - math.log(q)) + 0.5


def _cdf_and_sf(t: np.ndarray, q: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """F(t) and 1 - F(t), each computed directly (no cancellation in either tail)."""
    floor = math.log1p(-q) if q < 1 else -math.inf
    above = t > floor
    x = _x_of(np.where(above, t, 1.0), q, sigma)
    cdf = (1 - q) * special.ndtr(x / sigma) + q * special.ndtr((x - 1) / sigma)
    sf = (1 - q) * special.ndtr(-x / sigma) + q * special.ndtr((1 - x) / sigma)
    return np.where(above, cdf, 0.0), np.where(above, sf, 1.0)


def _loss(x: float, q: float, sigma: float) -> float:
    """The privacy loss at output x: log((1 - q) + q e^((2x - 1) / (2 sigma^2)))."""
    exponent = (2 * x - 1) / (2 * sigma**2)
    if q == 1:
        return exponent
    return float(np.logaddexp(math.log1p(-q), math.log(q) + exponent))


def _mean(q: float, sigma: float) -> float:
    """E[Y] = KL(P || Q), by quadrature over x (exactly 1 / (2 sigma^2) without subsampling)."""
    if q == 1:
        return 1 / (2 * sigma**2)

    def integrand(x: float) -> float:
        density = (1 - q) * math.exp(-(x**2) / (2 * sigma**2)) + q * math.exp(
            -((x - 1) ** 2) / (2 * sigma**2)
        )
        return _loss(x, q, sigma) * density / (sigma * math.sqrt(2 * math.pi))

    value, _ = integrate.quad(
        integrand,
        -(_Z_TAIL + 2) * sigma,
        1 + (_Z_TAIL + 2) * sigma,
        limit=500,
        points=[0.0, 0.5, 1.0],
        epsabs=1e-15,
        epsrel=1e-12,
    )
    return float(value)


@dataclass(frozen=True, eq=False)
class _Step:
    """One step's loss on the lattice h Z: masses at ``(first + j) h``, the mean correction
    (true mean minus lattice mean), upper bounds on its log moment-generating function at
    ``_LAMBDAS`` and ``-_LAMBDAS``, and its spectrum per lattice size (filled on demand)."""

    masses: np.ndarray
    first: int
    shift: float
    log_mgf_up: np.ndarray
    log_mgf_down: np.ndarray
    spectra: dict[int, np.ndarray] = field(default_factory=dict)

    def spectrum(self, size: int) -> np.ndarray:
        """The rFFT of the masses wrapped onto the periodic lattice of ``size`` points (the
        last small one is kept: a ledger asks again each round at about the same size)."""
        if size in self.spectra:
            return self.spectra[size]
        index = (self.first + np.arange(self.masses.size)) % size
        spectrum = fft.rfft(np.bincount(index, weights=self.masses, minlength=size))
        if size <= _CACHED_SPECTRUM:
            self.spectra.clear()
            self.spectra[size] = spectrum
        return spectrum


def _log_mgf(points: np.ndarray, masses: np.ndarray, lambdas: np.ndarray) -> np.ndarray:
    """Upper bounds on log E[e^(lambda Y)] for the lattice pmf, from coarse bins whose mass is
    moved to the end that maximises e^(lambda y)."""
    width = -(-masses.size // _COARSE_BINS)
    starts = np.arange(0, masses.size, width)
    low = points[starts]
    high = points[np.minimum(starts + width - 1, masses.size - 1)]
    with np.errstate(divide="ignore"):
        log_mass = np.log(np.add.reduceat(masses, starts))
    ends = np.where(lambdas[:, None] > 0, high[None, :], low[None, :])
    exponents = log_mass[None, :] + lambdas[:, None] * ends
    top = exponents.max(axis=1)
    return top + np.log(np.exp(exponents - top[:, None]).sum(axis=1))


@lru_cache(maxsize=64)
def _step(q: float, sigma: float, h: float) -> _Step:
    """The lattice pmf of one step (cached: queries at similar step counts share lattices)."""
    high = _loss(1 + _Z_TAIL * sigma, q, sigma)
    low = math.log1p(-q) if q < 1 else _loss(1 - _Z_TAIL * sigma, q, sigma)
    first, last = math.floor(low / h), math.ceil(high / h)
    edges = (np.arange(first, last + 2) - 0.5) * h
    cdf, sf = _cdf_and_sf(edges, q, sigma)
    # difference the CDF below the median and the survival function above it: each tail's
    # masses keep their relative precision
    upper = cdf > 0.5
    masses = np.where(upper[1:], sf[:-1] - sf[1:], np.diff(cdf))
    masses = np.clip(masses, 0.0, None)
    points = (first + np.arange(masses.size)) * h
    shift = _mean(q, sigma) - float(masses @ points) / float(masses.sum())
    return _Step(
        masses=masses,
        first=first,
        shift=shift,
        log_mgf_up=_log_mgf(points, masses, _LAMBDAS),
        log_mgf_down=_log_mgf(points, masses, -_LAMBDAS),
    )


def _lattice_width(eps_error: float, steps: int, delta_error: float) -> float:
    """The widest h, rounded down to a quarter power of two, with Hoeffding slack delta_error."""
    exact = eps_error * math.sqrt(2 / (steps * math.log(1 / delta_error)))
    return 2.0 ** (math.floor(4 * math.log2(exact)) / 4)


def _window(
    parts: Sequence[tuple[_Step, int]], tail: float, low_tail: float
) -> tuple[float, float]:
    """[bottom, top] holding the composed lattice loss except probability tail above and
    low_tail below (Chernoff bounds with the lattice steps' moment-generating functions)."""
    up = sum(k * s.log_mgf_up for s, k in parts)
    down = sum(k * s.log_mgf_down for s, k in parts)
    top = float(np.min((up - math.log(tail)) / _LAMBDAS))
    bottom = float(np.max((math.log(low_tail) - down) / _LAMBDAS))
    return bottom, top


def _compose(
    parts: Sequence[tuple[_Step, int]], h: float, bottom: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The composed lattice pmf on the periodic window of ``size`` points from ``bottom``, as
    ascending (loss values, masses): one FFT power per distinct step."""
    spectrum = np.ones(size // 2 + 1, dtype=np.complex128)
    for step, count in parts:
        spectrum *= step.spectrum(size) ** count
    composed = np.clip(fft.irfft(spectrum, n=size), 0.0, None)
    # position r holds the lattice indices r + N Z; the window reads the one in [start, start + N)
    start = math.floor(bottom / h)
    masses = np.roll(composed, -(start % size))
    values = (start + np.arange(size)) * h + sum(count * step.shift for step, count in parts)
    return values, masses


def _epsilon_at(values: np.ndarray, masses: np.ndarray, target: float) -> float:
    """The smallest eps >= 0 with sum over v > eps of m (1 - e^(eps - v)) <= target, solved
    exactly between lattice points (the hockey-stick divergence is piecewise exponential)."""
    keep = values > 0
    values, masses = values[keep], masses[keep]
    if masses.size == 0:
        return 0.0
    d1 = np.cumsum(masses[::-1])[::-1]  # mass at or above each point
    with np.errstate(divide="ignore"):  # log-space: e^-v underflows for large losses
        log_d2 = np.logaddexp.accumulate((np.log(masses) - values)[::-1])[::-1]
    # delta at each lattice point v_i (the points strictly above it count)
    above_d1 = np.append(d1[1:], 0.0)
    above_log_d2 = np.append(log_d2[1:], -np.inf)
    delta_at_points = above_d1 - np.exp(values + above_log_d2)
    if d1[0] - math.exp(log_d2[0]) <= target:  # delta(0) already meets the target
        return 0.0
    i = int(np.argmax(delta_at_points <= target))
    # on [v_(i-1), v_i] (or [0, v_0]), delta(eps) = d1[i] - e^eps d2[i]
    return max(0.0, math.log(d1[i] - target) - float(log_d2[i]))


def prv_epsilon(
    compositions: Sequence[tuple[float, float, int]],
    delta: float,
    *,
    eps_error: float = 0.01,
    max_points: int = MAX_POINTS,
) -> float:
    """An upper bound on the epsilon of composed Poisson-sampled Gaussian steps at ``delta``.

    Args:
        compositions: ``(sampling_rate, noise_multiplier, steps)`` triples, composed together.
        delta: the target delta.
        eps_error: the discretisation allowance added to the estimate.
        max_points: the largest composition lattice (memory: 16 bytes a point, a few arrays).

    Returns:
        ``eps_lattice(delta - charges) + allowance``: see the module docstring for each charge.
    """
    parts = [(q, s, k) for q, s, k in compositions if k > 0 and q > 0]
    if not parts:
        return 0.0
    if any(s <= 0 for _, s, _ in parts):
        return math.inf
    steps = sum(k for _, _, k in parts)
    delta_error = delta / 100
    tail = delta / 1000
    h = _lattice_width(eps_error, steps, delta_error)
    while True:
        composed = [(_step(q, s, h), k) for q, s, k in parts]
        bottom, top = _window(composed, tail, delta / 1000)
        size = 1 << max(4, math.ceil(math.log2((top - bottom) / h + 2)))
        if size <= max_points:
            break
        h *= 2.0 ** math.ceil(math.log2(size / max_points))
    allowance = h * math.sqrt(steps * math.log(1 / delta_error) / 2)
    numerical = 16 * size * np.finfo(np.float64).eps
    target = delta - delta_error - tail - delta / 1000 - 2 * _TAIL * steps - numerical
    if target <= 0:
        return math.inf
    values, masses = _compose(composed, h, bottom, size)
    return _epsilon_at(values, masses, target) + allowance
