"""What an algorithm decides each round, whatever engine runs it: who works how much, and with
which local objective.

An :class:`Algorithm` is a small object the engines call (DESIGN.md, section 2): the engine
samples the cohort and draws the round's stragglers from the seed (:func:`draw_stragglers`);
the algorithm says what each client's local work is (:meth:`Algorithm.plan_work`; a client left
out of the plan is dropped) and which proximal weight its local objective carries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from fl.core.config import AlgorithmConfig, AlgorithmName

__all__ = ["Algorithm", "LocalWork", "draw_stragglers", "make_algorithm"]


@dataclass(frozen=True)
class LocalWork:
    """One client's local work in one round.

    Attributes:
        epochs: passes over its examples.
        partial: whether this is a straggler's partial work (fewer epochs than the others).
    """

    epochs: int
    partial: bool = False


def draw_stragglers(
    cohort: Sequence[int], fraction: float, generator: np.random.Generator
) -> frozenset[int]:
    """``round(fraction * len(cohort))`` clients of the cohort, uniformly: the ones that cannot
    finish their local epochs this round (Li et al. 2020, Sec. 5.2: the same clients straggle
    under FedAvg and FedProx, so the two are compared on the same rounds)."""
    count = round(fraction * len(cohort))
    if count == 0:
        return frozenset()
    chosen = generator.choice(len(cohort), size=count, replace=False)
    return frozenset(int(cohort[i]) for i in chosen)


class Algorithm(ABC):
    """What clients and server compute in a round."""

    name: AlgorithmName

    @property
    @abstractmethod
    def proximal_mu(self) -> float | None:
        """The weight of the proximal term of the local objective (None: none)."""

    @abstractmethod
    def plan_work(
        self,
        cohort: Sequence[int],
        *,
        epochs: int,
        stragglers: Collection[int],
        generator: np.random.Generator,
    ) -> dict[int, LocalWork]:
        """Each client's local work this round; the clients left out are dropped.

        Args:
            cohort: the round's clients.
            epochs: the full local work, E epochs.
            stragglers: the clients that cannot finish E epochs this round.
            generator: the round's seeded draws (the stragglers' partial work).
        """


def make_algorithm(config: AlgorithmConfig) -> Algorithm:
    """The algorithm object a run's ``[algorithm]`` settings describe."""
    if config.name is AlgorithmName.FEDPROX:
        from fl.algorithms.fedprox import FedProx

        return FedProx(mu=config.mu)
    from fl.algorithms.fedavg import FedAvg

    return FedAvg()
