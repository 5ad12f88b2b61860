"""Privacy accounting: mechanisms as frozen events, composed by accountants; pure numpy/scipy.

Describe what ran as data, then ask for epsilon:

    >>> from dp.accounting import GaussianEvent, PoissonSampledEvent, RdpAccountant
    >>> step = PoissonSampledEvent(256 / 60000, GaussianEvent(1.1))
    >>> round(RdpAccountant().compose(step, count=14062).get_epsilon(1e-5), 2)
    2.6

Accountants: :class:`RdpAccountant` (default; Balle et al. 2020 conversion, or the classic one
of the moments accountant) and :class:`PrvAccountant` (numerical composition, tighter; sampled
Gaussian only). The RDP formulas live in :mod:`dp.rdp`, the PRV composition in :mod:`dp.prv`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

import numpy as np

from dp import prv, rdp
from dp.errors import PrivacyConfigError, UnsupportedEvent

__all__ = [
    "Accountant",
    "AccountantKind",
    "ComposedEvent",
    "DiscreteGaussianEvent",
    "Event",
    "GaussianEvent",
    "PoissonSampledEvent",
    "PrvAccountant",
    "RdpAccountant",
    "SelfComposedEvent",
    "SkellamEvent",
    "calibrate",
    "make_accountant",
]


@dataclass(frozen=True)
class GaussianEvent:
    """The Gaussian mechanism: sensitivity 1, noise standard deviation ``noise_multiplier``."""

    noise_multiplier: float


@dataclass(frozen=True)
class SkellamEvent:
    """The (distributed) Skellam mechanism in the integer domain: noise of ``variance`` per
    coordinate on a sum whose L1 / L2 sensitivities are given (Agarwal et al. 2021)."""

    l1_sensitivity: float
    l2_sensitivity: float
    variance: float


@dataclass(frozen=True)
class DiscreteGaussianEvent:
    """The distributed discrete Gaussian in the integer domain: ``num_clients`` shares of
    N_Z(0, local_sigma^2) per coordinate in ``dimension`` coordinates (Kairouz et al. 2021)."""

    l1_sensitivity: float
    l2_sensitivity: float
    local_sigma: float
    num_clients: int
    dimension: int


@dataclass(frozen=True)
class PoissonSampledEvent:
    """``event`` applied to a Poisson sample that includes each record with ``sampling_rate``."""

    sampling_rate: float
    event: Event


@dataclass(frozen=True)
class SelfComposedEvent:
    """``event`` applied ``count`` times."""

    event: Event
    count: int


@dataclass(frozen=True)
class ComposedEvent:
    """Several events, one after another."""

    events: tuple[Event, ...]


Event = (
    GaussianEvent
    | SkellamEvent
    | DiscreteGaussianEvent
    | PoissonSampledEvent
    | SelfComposedEvent
    | ComposedEvent
)


class AccountantKind(str, Enum):
    """Which accountant turns events into epsilon."""

    RDP = "rdp"  # Renyi DP, Balle et al. 2020 conversion (as Opacus)
    RDP_CLASSIC = "rdp-classic"  # Renyi DP, the moments accountant's conversion
    PRV = "prv"  # numerical composition (sampled Gaussian only)


def _unsampled_rdp(event: Event) -> Callable[[np.ndarray], np.ndarray] | None:
    """The RDP of an integer-domain mechanism as a function of an array of orders."""
    if isinstance(event, SkellamEvent):
        return lambda alphas: np.asarray(
            rdp.skellam_rdp(
                alphas,
                l1_sensitivity=event.l1_sensitivity,
                l2_sensitivity=event.l2_sensitivity,
                variance=event.variance,
            ),
            dtype=np.float64,
        )
    if isinstance(event, DiscreteGaussianEvent):
        return lambda alphas: np.asarray(
            rdp.discrete_gaussian_rdp(
                alphas,
                l1_sensitivity=event.l1_sensitivity,
                l2_sensitivity=event.l2_sensitivity,
                local_sigma=event.local_sigma,
                num_clients=event.num_clients,
                dimension=event.dimension,
            ),
            dtype=np.float64,
        )
    return None


@lru_cache(maxsize=1024)
def _rdp_of(event: Event, orders: tuple[float, ...]) -> tuple[float, ...]:
    if isinstance(event, GaussianEvent):
        return tuple(rdp.gaussian_rdp(event.noise_multiplier, orders))
    direct = _unsampled_rdp(event)
    if direct is not None:
        return tuple(direct(np.asarray(orders, dtype=np.float64)))
    if isinstance(event, PoissonSampledEvent):
        inner = event.event
        if isinstance(inner, GaussianEvent):
            return tuple(
                rdp.sampled_gaussian_rdp(event.sampling_rate, inner.noise_multiplier, orders)
            )
        unsampled = _unsampled_rdp(inner)
        if unsampled is not None:
            return tuple(rdp.subsampled_rdp(event.sampling_rate, unsampled, orders))
        raise UnsupportedEvent(f"Poisson sampling of {type(inner).__name__} is not supported")
    if isinstance(event, SelfComposedEvent):
        return tuple(event.count * np.asarray(_rdp_of(event.event, orders)))
    if isinstance(event, ComposedEvent):
        return (
            tuple(np.sum([_rdp_of(e, orders) for e in event.events], axis=0))
            if event.events
            else (0.0,) * len(orders)
        )
    raise UnsupportedEvent(f"unknown privacy event {event!r}")


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise PrivacyConfigError(f"delta must lie in (0, 1), got {delta}")


class RdpAccountant:
    """Accumulates RDP over composed events (Mironov 2017)."""

    kind = AccountantKind.RDP

    def __init__(
        self, orders: Sequence[float] = rdp.DEFAULT_ORDERS, *, classic: bool = False
    ) -> None:
        self.orders = tuple(float(o) for o in orders)
        self.classic = classic
        self._rdp = np.zeros(len(self.orders))

    def compose(self, event: Event, count: int = 1) -> RdpAccountant:
        """Add ``count`` applications of ``event``; returns self for chaining."""
        self._rdp = self._rdp + count * np.asarray(_rdp_of(event, self.orders))
        return self

    def get_epsilon(self, delta: float) -> float:
        """Epsilon at ``delta`` (minimised over orders)."""
        _check_delta(delta)
        return rdp.epsilon_from_rdp(self._rdp, delta, self.orders, classic=self.classic)[0]


class PrvAccountant:
    """Numerical composition of privacy random variables (Gopi et al. 2021); sampled Gaussian
    steps only. Tighter than RDP. Each query composes every distinct (rate, noise) with one FFT
    power on a bounded lattice (:mod:`dp.prv`); single-step lattices and answers are cached, so
    a ledger asking again each round, or a calibration at one rate, stays cheap."""

    kind = AccountantKind.PRV

    def __init__(self, *, eps_error: float = 0.01) -> None:
        self.eps_error = eps_error
        self._steps: dict[tuple[float, float], int] = {}

    def compose(self, event: Event, count: int = 1) -> PrvAccountant:
        """Add ``count`` applications of ``event`` (Gaussian, possibly Poisson-sampled)."""
        if isinstance(event, SelfComposedEvent):
            return self.compose(event.event, count * event.count)
        if isinstance(event, ComposedEvent):
            for inner in event.events:
                self.compose(inner, count)
            return self
        if isinstance(event, GaussianEvent):
            key = (1.0, event.noise_multiplier)
        elif isinstance(event, PoissonSampledEvent) and isinstance(event.event, GaussianEvent):
            key = (event.sampling_rate, event.event.noise_multiplier)
        else:
            raise UnsupportedEvent(
                f"the PRV accountant supports (sampled) Gaussian events, not {type(event).__name__}; "
                "use the RDP accountant"
            )
        self._steps[key] = self._steps.get(key, 0) + count
        return self

    def get_epsilon(self, delta: float) -> float:
        """An upper bound on epsilon at ``delta`` (estimate plus the discretisation allowance)."""
        _check_delta(delta)
        return _prv_cached(
            tuple(sorted((q, s, k) for (q, s), k in self._steps.items())), delta, self.eps_error
        )


@lru_cache(maxsize=256)
def _prv_cached(
    compositions: tuple[tuple[float, float, int], ...], delta: float, eps_error: float
) -> float:
    return prv.prv_epsilon(compositions, delta, eps_error=eps_error)


Accountant = RdpAccountant | PrvAccountant


def make_accountant(kind: AccountantKind | str) -> Accountant:
    """A fresh accountant of the given kind."""
    kind = AccountantKind(kind)
    if kind is AccountantKind.PRV:
        return PrvAccountant()
    return RdpAccountant(classic=kind is AccountantKind.RDP_CLASSIC)


CALIBRATION_STEPS = 40
"""The most epsilon evaluations :func:`calibrate` makes (the ``n`` of its progress reports)."""

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)``: called after each unit of work, ending with ``done == total``."""


def calibrate(
    epsilon_of: Callable[[float], float],
    target: float,
    *,
    low: float = 0.05,
    high: float = 100.0,
    what: str,
    tolerance: float = 1e-3,
    progress: ProgressCallback | None = None,
) -> float:
    """The smallest noise level in [low, high] whose epsilon is at most ``target``, to a relative
    ``tolerance`` (the result always meets the target).

    Epsilon falls with the noise level, about as its inverse, so the search runs false position
    (Illinois variant) on ``log epsilon`` against ``log noise`` inside a bracket that shrinks
    from both sides: a handful of evaluations instead of a bisection's fifteen, which matters for
    the PRV accountant.

    Args:
        epsilon_of: epsilon as a function of the noise level (non-increasing).
        target: the epsilon to reach.
        low, high: the noise levels searched.
        what: the noise level's name, for the error message.
        tolerance: the relative width of the final bracket.
        progress: ``progress(evaluations, CALIBRATION_STEPS)`` after each evaluation, and
            ``progress(CALIBRATION_STEPS, CALIBRATION_STEPS)`` at the end.

    Raises:
        PrivacyConfigError: even ``high`` cannot reach the target.
    """
    if not (target > 0 and math.isfinite(target)):
        raise PrivacyConfigError(f"target epsilon must be a positive number, got {target}")
    evaluations = 0

    def gap(noise: float) -> float:
        """log(epsilon / target): <= 0 when the noise meets the target."""
        nonlocal evaluations
        evaluations += 1
        value = epsilon_of(noise)
        if progress is not None:
            progress(min(evaluations, CALIBRATION_STEPS - 1), CALIBRATION_STEPS)
        if value <= 0:
            return -math.inf
        return math.log(value / target) if math.isfinite(value) else math.inf

    try:
        return _false_position(gap, low, high, tolerance, what=what, target=target)
    finally:
        if progress is not None:
            progress(CALIBRATION_STEPS, CALIBRATION_STEPS)


def _false_position(
    gap: Callable[[float], float],
    low: float,
    high: float,
    tolerance: float,
    *,
    what: str,
    target: float,
) -> float:
    """The bracketed search of :func:`calibrate` in log-noise coordinates."""
    x_high, y_high = math.log(high), gap(high)
    if y_high > 0:
        raise PrivacyConfigError(
            f"no {what} up to {high} reaches epsilon {target}; raise the target epsilon or delta, "
            "or lower the number of rounds, epochs or the sampling rate"
        )
    x_low_limit = math.log(low)
    # first guess: epsilon inversely proportional to the noise
    x = max(x_low_limit, x_high + y_high) if math.isfinite(y_high) else x_low_limit
    x_low, y_low = None, None
    while x_low is None:
        y = gap(math.exp(x))
        if y > 0:
            x_low, y_low = x, y
        elif x <= x_low_limit:
            return low
        else:
            x_high, y_high = x, y
            # past the root estimate of epsilon ~ 1 / noise, to find an infeasible point
            step = 1.2 * y - 0.01 if math.isfinite(y) else -1.0
            x = max(x_low_limit, x + step)
    width = math.log1p(tolerance)
    replaced = 0  # the end the last step replaced (+1 high, -1 low), for the Illinois rule
    for _ in range(CALIBRATION_STEPS):
        if x_high - x_low <= width:
            break
        if math.isfinite(y_low) and math.isfinite(y_high) and y_low != y_high:
            x = x_low + (x_high - x_low) * y_low / (y_low - y_high)
        else:
            x = (x_low + x_high) / 2
        # stay a little inside the bracket so that it closes from either side
        x = min(max(x, x_low + width / 2), x_high - width / 2)
        y = gap(math.exp(x))
        if y > 0:
            x_low, y_low = x, y
            if replaced == -1:  # the high end stayed twice: halve its weight
                y_high /= 2
            replaced = -1
        else:
            x_high, y_high = x, y
            if replaced == 1:
                y_low /= 2
            replaced = 1
    return math.exp(x_high)
