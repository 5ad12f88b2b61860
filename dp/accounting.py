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
    steps only. Tighter than RDP; slower (one FFT over ~10^6 points per query)."""

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


def calibrate(
    epsilon_of: Callable[[float], float],
    target: float,
    *,
    low: float = 0.05,
    high: float = 100.0,
    what: str,
) -> float:
    """The smallest noise level in [low, high] whose epsilon is at most ``target`` (bisection).

    Raises:
        PrivacyConfigError: even ``high`` cannot reach the target.
    """
    if not (target > 0 and math.isfinite(target)):
        raise PrivacyConfigError(f"target epsilon must be a positive number, got {target}")
    if epsilon_of(high) > target:
        raise PrivacyConfigError(
            f"no {what} up to {high} reaches epsilon {target}; raise the target epsilon or delta, "
            "or lower the number of rounds, epochs or the sampling rate"
        )
    if epsilon_of(low) <= target:
        return low
    for _ in range(40):
        middle = math.sqrt(low * high)
        low, high = (low, middle) if epsilon_of(middle) <= target else (middle, high)
        if high / low < 1.001:
            break
    return high
