"""Distributed noise that the survivors shrink to exactly what they need ("add then remove").

Each client of a round adds the share of integer noise that the worst case needs: the released
sum must carry variance V from honest clients even if only ``t - c`` of them are in it, so each
adds ``V / (t - c)``. When more clients survive, the sum carries up to ``n / (t - c)`` times V.
Dordis (Jiang et al., EuroSys 2024) splits each client's share into a *base* component, sized for
the most honest clients any sum could hold, plus *removable excess* components drawn from seeds
the client keeps secret. Once the set of survivors is fixed and certified, each client reveals the
seeds of the excess that the certified survivors make unnecessary; the server regenerates those
components and subtracts them. What stays is the base and the unrevealed excess: at least
``V / m`` per client, where ``m`` is the fewest honest clients in any sum the server can unmask.

The excess is a binary ladder: ``K`` components of variance ``u, 2u, 4u, ... 2^(K-1) u`` with
``u = E / (2^K - 1)`` and ``E = V / (t - c) - V / m_max``, so any multiple of ``u`` up to E can be
removed and the variance left per client lies in ``[V / m, V / m + u)``. ``K`` is the smallest
ladder whose rounding excess stays below ``tolerance`` of the target for every ``m``.

Skellam variances add (the sum of independent symmetric Skellam draws is Skellam), so the base
and the ladder together are exactly the client's usual ``V / (t - c)`` share; the privacy
guarantee with no removal at all is unchanged. Removal only applies with the Skellam mechanism.

Example:
    >>> ladder = RemovableNoise(total_variance=100.0, noise_shares=49, most_honest=95)
    >>> ladder.removal(95) == tuple(range(ladder.size))  # everyone survived: all excess goes
    True
    >>> ladder.removal(49)  # the worst case: nothing can go
    ()
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dp.errors import PrivacyConfigError
from dp.samplers import sample_skellam, skellam_table
from secagg.hazmat.prg import SEED_BYTES, KeystreamReader
from secagg.randomness import RandomSource, system_random

__all__ = ["SEED_BYTES", "NoiseSeeds", "RemovableNoise"]

_MAX_LADDER = 24


@dataclass(frozen=True)
class RemovableNoise:
    """The split of one client's noise share into a base and a removable binary ladder.

    Attributes:
        total_variance: V, the variance per coordinate (in ring units) the released sum must
            carry from honest clients.
        noise_shares: t - c, the fewest honest clients in any sum (the no-removal share V/(t-c)).
        most_honest: the most honest clients any certified sum can hold (k + 1 - c: a closed
            neighbourhood less its corrupt members); the base share is V / most_honest.
        tolerance: the largest relative excess of the variance left over V / m.
    """

    total_variance: float
    noise_shares: int
    most_honest: int
    tolerance: float = 0.005

    def __post_init__(self) -> None:
        if not self.total_variance >= 0 or not math.isfinite(self.total_variance):
            raise PrivacyConfigError(f"the noise variance must be >= 0, got {self.total_variance}")
        if not 1 <= self.noise_shares <= self.most_honest:
            raise PrivacyConfigError(
                f"need 1 <= t - c <= most honest clients, got t - c = {self.noise_shares} and "
                f"{self.most_honest}"
            )
        if not 0 < self.tolerance < 1:
            raise PrivacyConfigError(f"tolerance must lie in (0, 1), got {self.tolerance}")

    @property
    def share_variance(self) -> float:
        """V / (t - c): one client's whole share, base and ladder together."""
        return self.total_variance / self.noise_shares

    @property
    def base_variance(self) -> float:
        """V / most_honest: the part no certification can remove."""
        return self.total_variance / self.most_honest

    @property
    def size(self) -> int:
        """K, the number of removable components (0 when nothing could ever be removed)."""
        excess_ratio = self.most_honest / self.noise_shares - 1  # E * m_max / V
        if excess_ratio <= 0 or self.total_variance == 0:
            return 0
        return min(_MAX_LADDER, math.ceil(math.log2(1 + excess_ratio / self.tolerance)))

    @property
    def unit(self) -> float:
        """u: the smallest removable step of variance."""
        size = self.size
        return (self.share_variance - self.base_variance) / (2**size - 1) if size else 0.0

    @property
    def component_variances(self) -> tuple[float, ...]:
        """The ladder's variances, u 2^j for j = 0 .. K - 1."""
        return tuple(self.unit * 2**j for j in range(self.size))

    def removal(self, honest_floor: int) -> tuple[int, ...]:
        """The components to reveal when every sum holds at least ``honest_floor`` honest clients.

        Each client then keeps at least V / honest_floor: the honest clients of any sum together
        keep at least V.
        """
        if honest_floor <= self.noise_shares or not self.size:
            return ()
        floor = min(honest_floor, self.most_honest)
        removable = self.share_variance - self.total_variance / floor
        steps = min(2**self.size - 1, math.floor(removable / self.unit * (1 + 1e-12)))
        while steps and self.variance_left(_bits(steps)) < self.total_variance / floor:
            steps -= 1  # float rounding must never leave less than V / floor
        return _bits(steps)

    def variance_left(self, revealed: tuple[int, ...]) -> float:
        """One client's variance once the components ``revealed`` are removed."""
        ladder = self.component_variances
        return self.share_variance - sum(ladder[j] for j in revealed)

    def sampler_distance(self, count: int) -> float:
        """Total-variation distance of one client's ``count`` coordinates from the analysed law:
        the Skellam tables' bounds of the base and of every ladder component."""
        variances = (self.base_variance, *self.component_variances)
        return count * sum(skellam_table(v).tv_bound for v in variances if v > 0)

    def component(self, seed: bytes, index: int, count: int) -> np.ndarray:
        """Ladder component ``index`` regenerated from its seed (int64, ``count`` coordinates)."""
        if not 0 <= index < self.size:
            raise PrivacyConfigError(f"no ladder component {index}; the ladder has {self.size}")
        if len(seed) != SEED_BYTES:
            raise PrivacyConfigError(f"a component seed is {SEED_BYTES} bytes, got {len(seed)}")
        return sample_skellam(self.component_variances[index], count, KeystreamReader(seed))

    def excess(self, revealed: dict[int, bytes], count: int) -> np.ndarray:
        """The sum of the revealed components ``{index: seed}`` (int64, ``count`` coordinates)."""
        total = np.zeros(count, dtype=np.int64)
        for index, seed in revealed.items():
            total += self.component(seed, index, count)
        return total


def _bits(steps: int) -> tuple[int, ...]:
    return tuple(j for j in range(steps.bit_length()) if steps >> j & 1)


@dataclass(frozen=True)
class NoiseSeeds:
    """One client's secret ladder seeds for one round; it reveals some after certification."""

    seeds: tuple[bytes, ...]

    @classmethod
    def generate(
        cls, ladder: RemovableNoise, random_bytes: RandomSource = system_random
    ) -> NoiseSeeds:
        """Fresh secret seeds, one per ladder component."""
        return cls(tuple(random_bytes(SEED_BYTES) for _ in range(ladder.size)))

    def noise(
        self, ladder: RemovableNoise, count: int, random_bytes: RandomSource = system_random
    ) -> np.ndarray:
        """This client's whole share: the base (from ``random_bytes``) plus every component."""
        base = sample_skellam(ladder.base_variance, count, random_bytes)
        return base + ladder.excess(dict(enumerate(self.seeds)), count)

    def reveal(self, indices: tuple[int, ...]) -> tuple[tuple[int, bytes], ...]:
        """The ``(index, seed)`` pairs of the components to remove."""
        return tuple((j, self.seeds[j]) for j in indices)
