"""The errors of the torch.distributed engine: who was lost, and this rank being left out."""

from __future__ import annotations

from collections.abc import Iterable

import secagg
from fl.errors import FLError

__all__ = ["RankExcluded", "RanksLost", "StoreUnavailable"]


class RanksLost(secagg.ThresholdNotMet):
    """A step cannot finish securely: too few ranks answered in time. Nothing was released.

    Attributes:
        step: the step (0-based count of secure all-reduces on this group).
        missing: the ranks that did not answer in time.
        survivors: the ranks that did.
    """

    def __init__(
        self, message: str, *, step: int, missing: Iterable[int], survivors: Iterable[int]
    ) -> None:
        self.step = step
        self.missing = tuple(sorted(missing))
        self.survivors = tuple(sorted(survivors))
        super().__init__(
            f"step {step}: {message} (missing ranks {list(self.missing)}, "
            f"answering ranks {list(self.survivors)})"
        )


class RankExcluded(FLError):
    """This rank was left out of the secure group (it did not answer within the timeout, or the
    others could not reach it); the others go on without it. Stop this rank's training loop."""

    def __init__(self, rank: int, step: int, reason: str) -> None:
        self.rank, self.step = rank, step
        super().__init__(f"rank {rank} was excluded from the secure group at step {step}: {reason}")


class StoreUnavailable(FLError):
    """The process group's store cannot be reached (the process that hosts it is gone)."""
