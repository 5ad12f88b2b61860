"""The one interface every engine implements: sample a cohort, train, take the secure sum, apply.

An engine decides *where* things run (this process, Flower nodes, torch.distributed ranks); what
the server and the clients compute is an algorithm's business (:mod:`fl.algorithms`). Each engine
implements the four steps, and :meth:`Engine.step` runs them in order and records what happened,
so every engine treats a failed round the same way: nothing is released, the model is unchanged,
and the reason is kept.

Example:
    >>> class Constant(Engine[list[float]]):
    ...     def sample_cohort(self, round_index):
    ...         return [1, 2, 3]
    ...     def train(self, round_index, cohort):
    ...         return [float(u) for u in cohort]
    ...     def secure_sum(self, round_index, trained):
    ...         return sum(trained) / len(trained)
    ...     def apply(self, round_index, outcome):
    ...         self.model = outcome
    >>> engine = Constant()
    >>> engine.step(0).released, engine.model
    (True, 2.0)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import secagg

__all__ = ["ROUND_FAILURES", "Engine", "RoundRecord"]

Trained = TypeVar("Trained")

ROUND_FAILURES: tuple[type[Exception], ...] = (secagg.ThresholdNotMet, secagg.PolicyViolation)
"""What ends a round without a release: too few clients left, or clients refusing the session."""


@dataclass(frozen=True, eq=False)
class RoundRecord(Generic[Trained]):
    """What one round did.

    Attributes:
        round_index: the round, 0-based.
        cohort: the clients sampled.
        trained: the engine's record of the training step (None: the round stopped before it).
        outcome: the released aggregate (None: nothing was released).
        failure: why nothing was released, when a step raised one of :data:`ROUND_FAILURES`.
    """

    round_index: int
    cohort: tuple[int, ...]
    trained: Trained | None
    outcome: Any
    failure: Exception | None

    @property
    def released(self) -> bool:
        """Whether the round released an aggregate (and the model moved)."""
        return self.outcome is not None


class Engine(ABC, Generic[Trained]):
    """Sample cohort -> train -> secure sum -> apply, the same for every engine."""

    @abstractmethod
    def sample_cohort(self, round_index: int) -> Sequence[int]:
        """The clients of round ``round_index``."""

    def ready(self, round_index: int, cohort: Sequence[int]) -> bool:
        """Whether the round can go on with ``cohort`` (default: yes)."""
        return True

    @abstractmethod
    def train(self, round_index: int, cohort: Sequence[int]) -> Trained:
        """Have the cohort train from the current model (or prepare it to, where training runs
        on the clients' own machines while the protocol asks for their masked inputs)."""

    @abstractmethod
    def secure_sum(self, round_index: int, trained: Trained) -> Any:
        """The aggregate of the cohort's updates, through secure aggregation (or in the clear
        where the configuration says so).

        Raises:
            secagg.ThresholdNotMet, secagg.PolicyViolation: nothing can be released.
        """

    @abstractmethod
    def apply(self, round_index: int, outcome: Any) -> None:
        """Move the global model by the released aggregate."""

    def step(self, round_index: int) -> RoundRecord[Trained]:
        """Run one round's four steps; a failure releases nothing and changes nothing."""
        cohort = tuple(self.sample_cohort(round_index))
        if not self.ready(round_index, cohort):
            return RoundRecord(round_index, cohort, None, None, None)
        trained = self.train(round_index, cohort)
        try:
            outcome = self.secure_sum(round_index, trained)
        except ROUND_FAILURES as failure:
            return RoundRecord(round_index, cohort, trained, None, failure)
        self.apply(round_index, outcome)
        return RoundRecord(round_index, cohort, trained, outcome, None)
