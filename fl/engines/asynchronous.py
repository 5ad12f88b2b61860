"""Buffered asynchronous secure aggregation in this process (FedBuff, Nguyen et al. AISTATS
2022; its secure version: So et al. 2021).

``concurrency`` (C) clients train at any time, each from the model version it pulled when it
started; a client takes :func:`fl.core.speeds.task_seconds` on the simulated clock (a seeded
lognormal spread of device speeds). Arrivals wait in a buffer; every ``buffer`` (K) arrivals
form one secure-aggregation session among those K clients, whose sum is one server update
(one "round" of the run's metrics, stamped with the simulated time). A client whose update
joins a buffer tau versions after the one it pulled weighs its update by
s(tau) = 1 / sqrt(1 + tau) *itself*, before encoding and masking
(:func:`fl.algorithms.fedbuff.weigh_update`): the server never holds an individual update,
weighed or not. As each client arrives, another idle client (uniformly, from the seed) starts
on the current model, so C stay busy; the replacement of the client that fills the buffer
starts after the update, on the new model.

Dropouts are injected into each session's protocol phases as in synchronous rounds; a session
that falls below its threshold releases nothing (those K updates are lost, as a synchronous
round's would be) and training goes on. Everything but the protocol's keys and masks derives
from the seed, so a run replays exactly.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fl.algorithms.base import LocalWork
from fl.algorithms.fedbuff import weigh_update
from fl.core.aggregation import AggregateOutcome, finite_updates
from fl.core.report import RoundMetrics
from fl.engines.federation import Federation, TrainedCohort, draw_dropouts
from fl.engines.local import ClientTask

__all__ = ["AsyncFederation", "BufferedCohort", "Task"]

_LAUNCHES = 0xA5C  # the seed stream that picks which idle client starts next


@dataclass(frozen=True, order=True)
class Task:
    """One client's local training on the model version it pulled.

    Attributes:
        finishes: the simulated time it arrives at the server.
        number: launch order (0, 1, ...): breaks ties, and seeds the client's minibatch order.
        client: the client.
        version: the model version it pulled (0: the initial model).
        started: the simulated time it pulled the model.
    """

    finishes: float
    number: int
    client: int = field(compare=False)
    version: int = field(compare=False)
    started: float = field(compare=False)


@dataclass(frozen=True, eq=False)
class BufferedCohort(TrainedCohort):
    """A buffer's training step: the clients' weighed updates, and how stale each was."""

    staleness: dict[int, int] = field(default_factory=dict)


@dataclass
class AsyncFederation(Federation):
    """The in-process engine in asynchronous mode: one secure-aggregation session per buffer
    of K arrivals (the four steps of :class:`fl.engines.base.Engine`)."""

    version: int = 0
    _versions: dict[int, torch.Tensor] = field(default_factory=dict)
    _in_flight: list[Task] = field(default_factory=list)
    _buffer: list[Task] = field(default_factory=list)
    _session: list[Task] = field(default_factory=list)
    _owed: int = 0
    _launched: int = 0
    _launches: np.random.Generator | None = None
    _staleness: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._versions[0] = self.server.global_vector
        self._owed = self.config.async_concurrency
        self._launches = np.random.default_rng([self.config.seed, _LAUNCHES])

    # -- the simulated clock ----------------------------------------------------------------------

    def _busy(self) -> set[int]:
        return {task.client for task in (*self._in_flight, *self._buffer, *self._session)}

    def _launch_owed(self) -> None:
        """Start as many owed tasks as there are idle clients, on the current model."""
        busy = self._busy()
        idle = [u for u in range(1, self.config.training.clients + 1) if u not in busy]
        while self._owed > 0 and idle:
            client = idle.pop(int(self._launches.integers(len(idle))))
            seconds = self.task_seconds(client, self.config.training.local_epochs)
            task = Task(self.clock + seconds, self._launched, client, self.version, self.clock)
            heapq.heappush(self._in_flight, task)
            self._launched += 1
            self._owed -= 1

    def _forget_versions(self) -> None:
        """Keep only the model versions a task still needs, and the current one."""
        needed = {task.version for task in (*self._in_flight, *self._buffer, *self._session)}
        needed.add(self.version)
        for version in [v for v in self._versions if v not in needed]:
            del self._versions[version]

    # -- the engine's four steps (fl.engines.base.Engine) ----------------------------------------

    def sample_cohort(self, round_index: int) -> list[int]:
        """Advance the simulated clock until K clients have arrived: they are the session."""
        self._session = []
        self._launch_owed()  # the last session's replacements start on the current model
        buffer = self.config.async_buffer
        while len(self._buffer) < buffer:
            task = heapq.heappop(self._in_flight)
            self.clock = task.finishes
            self._buffer.append(task)
            self._owed += 1  # another client starts now (or as soon as one is idle) ...
            if len(self._buffer) < buffer:
                self._launch_owed()  # ... except after the K-th: on the updated model
        self._session, self._buffer = self._buffer, []
        cohort = [task.client for task in self._session]
        self._dropouts = draw_dropouts(
            cohort,
            self.config.secure.dropout,
            identities=self.config.secure.identities,
            generator=self._generator(round_index),
        )
        self._pending = []
        return cohort

    def train(self, round_index: int, cohort: Sequence[int]) -> BufferedCohort:
        """Each buffered client's update from the version it pulled, weighed by the client by
        s(tau) before it is encoded and masked; non-finite updates are left out."""
        work = LocalWork(self.config.training.local_epochs)
        tasks = [
            ClientTask(
                task.client,
                *self.data.client_arrays(task.client),
                work=work,
                stream=task.number,
                start=task.version,
            )
            for task in self._session
        ]
        starts = {task.version: self._versions[task.version] for task in self._session}
        trained = self._train_all(round_index, tasks, starts)
        updates, seconds, staleness = {}, 0.0, {}
        for task in self._session:
            staleness[task.client] = self.version - task.version
            updates[task.client] = weigh_update(trained[task.client].update, staleness[task.client])
            seconds += trained[task.client].seconds
        self._staleness = staleness
        updates, non_finite = finite_updates(updates)
        dropouts = {u: phase for u, phase in self._dropouts.items() if u in updates}
        return BufferedCohort(
            updates,
            dropouts,
            non_finite,
            seconds,
            simulated_seconds=max(t.finishes - t.started for t in self._session),
            staleness=staleness,
        )

    def apply(self, round_index: int, outcome: AggregateOutcome) -> None:
        """One server update: a new model version."""
        super().apply(round_index, outcome)
        self.version += 1
        self._versions[self.version] = self.server.global_vector

    def run_round(self, round_index: int) -> RoundMetrics:
        """One buffer: its session, the update, and its metrics at the simulated time of the
        K-th arrival (with the buffer's mean staleness)."""
        self._staleness = {}
        metrics = super().run_round(round_index)
        self._session = []
        self._forget_versions()
        if not self._staleness:
            return metrics
        return dataclasses.replace(
            metrics, staleness=float(np.mean(list(self._staleness.values())))
        )
