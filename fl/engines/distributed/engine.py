"""Synchronous data-parallel SGD as the four steps of :class:`fl.engines.base.Engine`.

How the steps map onto ranks (every rank runs the same engine, on its own batches):

* **sample_cohort** - the live ranks: the members of the secure group's current session (a
  rank lost earlier is no longer sampled);
* **train** - one local forward and backward pass on this rank's batch for the step; the
  "update" is the flat gradient;
* **secure_sum** - :class:`~.allreduce.SecureAllReduce` of the gradients, divided by the number of
  contributing ranks (the average gradient); a step that cannot finish securely raises
  :class:`~.errors.RanksLost`, which :meth:`Engine.step` records as a round that released
  nothing;
* **apply** - the averaged gradient goes into ``.grad`` and the optimizer steps.

Example:
    >>> engine = DistributedEngine(model, optimizer, loss, batches)  # doctest: +SKIP
    >>> for step in range(steps):  # doctest: +SKIP
    ...     record = engine.step(step)
    ...     if not record.released:
    ...         print("step", step, "skipped:", record.failure)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fl.engines.base import Engine
from fl.engines.distributed.allreduce import ReduceReport, SecureAllReduce

__all__ = ["DistributedEngine"]

Batch = tuple[torch.Tensor, torch.Tensor]


class DistributedEngine(Engine[torch.Tensor]):
    """Data-parallel SGD on the ranks of a process group, every gradient secure-summed.

    Args:
        model: this rank's replica (every rank starts from the same parameters).
        optimizer: the optimizer over ``model``'s parameters.
        loss: ``loss(model(x), y)`` gives the scalar to differentiate.
        batches: ``batches(step)`` is this rank's (inputs, targets) for a step.
        reducer: the secure group (a :class:`SecureAllReduce` over the default group if omitted).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        batches: Callable[[int], Batch],
        *,
        reducer: SecureAllReduce | None = None,
    ) -> None:
        self.model, self.optimizer, self.loss, self.batches = model, optimizer, loss, batches
        self.reducer = SecureAllReduce() if reducer is None else reducer
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.last_report: ReduceReport | None = None
        self.last_loss: float | None = None

    def sample_cohort(self, round_index: int) -> Sequence[int]:
        """The ranks of the current session."""
        return self.reducer.members

    def train(self, round_index: int, cohort: Sequence[int]) -> torch.Tensor:
        """Forward and backward on this rank's batch; returns the flat local gradient."""
        inputs, targets = self.batches(round_index)
        self.optimizer.zero_grad(set_to_none=False)
        loss = self.loss(self.model(inputs), targets)
        loss.backward()
        self.last_loss = float(loss.detach())
        return torch.cat([p.grad.detach().reshape(-1) for p in self.parameters])

    def secure_sum(self, round_index: int, trained: torch.Tensor) -> torch.Tensor:
        """The average gradient over the contributing ranks, through the secure all-reduce."""
        total, report = self.reducer.reduce(trained)
        self.last_report = report
        return total.div_(len(report.contributors))

    def apply(self, round_index: int, outcome: torch.Tensor) -> None:
        """Write the averaged gradient into ``.grad`` and step the optimizer."""
        offset = 0
        with torch.no_grad():
            for parameter in self.parameters:
                size = parameter.numel()
                parameter.grad.copy_(outcome[offset : offset + size].view_as(parameter))
                offset += size
        self.optimizer.step()
