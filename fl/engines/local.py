"""One client's local training, the same wherever it runs: in the engine's own process, or in a
worker process of :mod:`fl.engines.pool`.

A :class:`LocalTrainer` holds what every client of a run needs (the settings, a working copy of
the model, the sample-level DP plan) and nothing about any one client: the engine hands it a
client's examples and the global model, and gets the update back. It is picklable, so the pool
ships it once to each worker at the start of a run.

Training runs with one intra-op thread (:func:`one_thread`). The reference models are tiny: on
2 cores a 64-unit MLP step on a batch of 16 took 4.2 ms with torch's two threads and 0.57 ms
with one, and a thread pool per process would fight the worker processes for the same cores.
Fixing the thread count also keeps the arithmetic the same in every process, which the
bit-for-bit agreement of the pooled and the in-process engines rests on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dp.ledger import PrivacyLevel
from fl.algorithms.base import LocalWork
from fl.core.aggregation import ClientUpdate
from fl.core.config import RunConfig
from fl.core.params import load_vector
from fl.core.privacy import SampleLevelPlan
from fl.core.training import train_locally

__all__ = [
    "GLOBAL_START",
    "ClientTask",
    "LocalTrainer",
    "TrainedClient",
    "one_thread",
    "stream_seed",
]

GLOBAL_START = 0
"""The key of the round's global model among a training step's start vectors (synchronous
rounds have only this one; asynchronous sessions key each model version they trained from)."""


def stream_seed(*key: int) -> int:
    """A 63-bit seed for one (seed, round, client) stream."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> np.uint64(1))


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one torch intra-op thread, restoring the count afterwards."""
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


@dataclass(frozen=True, eq=False)
class ClientTask:
    """One client's part of a round's training.

    Attributes:
        client: its id.
        x, y: its examples.
        work: its local work (epochs; a straggler's partial work); None: the run's
            ``training.local_epochs``.
        stream: the index that seeds its minibatch order with ``(config.seed, stream, client)``;
            None: the round's index (asynchronous sessions use the client's launch number).
        start: the key of the vector it trains from among the step's start vectors
            (:data:`GLOBAL_START`: the round's global model).
    """

    client: int
    x: np.ndarray
    y: np.ndarray
    work: LocalWork | None = None
    stream: int | None = None
    start: int = GLOBAL_START

    @property
    def examples(self) -> int:
        """How many examples the client holds (what its training costs grows with)."""
        return len(self.y)


@dataclass(frozen=True, eq=False)
class TrainedClient:
    """What one client's training produced: its update and the seconds it took."""

    client: int
    update: ClientUpdate
    seconds: float


@dataclass(eq=False)
class LocalTrainer:
    """Trains any client of a run from the global model.

    Attributes:
        config: the run's settings.
        model: a working copy of the model (its parameters are overwritten by every call).
        device: where to train.
        sample_plan: the sample-level DP plan (noise, sampling rates, noisy counts), when the
            run has sample-level DP.
        proximal_mu: FedProx's proximal weight mu of the local objective (Li et al., MLSys
            2020, eq. 2), None for plain local training.
    """

    config: RunConfig
    model: nn.Module
    device: torch.device
    sample_plan: SampleLevelPlan | None = None
    proximal_mu: float | None = None

    def train(
        self, round_index: int, task: ClientTask, global_vector: torch.Tensor
    ) -> TrainedClient:
        """One client's local update from ``global_vector`` (its start: the round's global
        model, or the version an asynchronous client pulled) in round ``round_index``.

        The minibatch order derives from ``(config.seed, task.stream or round, client)``; the
        work is ``task.work`` with the proximal term (to ``global_vector``) when
        ``proximal_mu`` is set. At sample level the DP-SGD noise and batches come from
        :func:`os.urandom` unless the run asks for reproducible noise.
        """
        stream = round_index if task.stream is None else task.stream
        seed = stream_seed(self.config.seed, stream, task.client)
        with one_thread():
            if self.config.privacy.level is not PrivacyLevel.SAMPLE:
                local = train_locally(
                    self.model,
                    global_vector,
                    task.x,
                    task.y,
                    training=self.config.training,
                    device=self.device,
                    generator=torch.Generator().manual_seed(seed),
                    epochs=None if task.work is None else task.work.epochs,
                    proximal_mu=self.proximal_mu,
                )
                return TrainedClient(task.client, local.update, local.seconds)
            return self._train_privately(task, global_vector, seed)

    def _train_privately(
        self, task: ClientTask, global_vector: torch.Tensor, seed: int
    ) -> TrainedClient:
        from dp.local import SECRET_SEED_BYTES, train_privately  # Opacus loads only here

        privacy, training, plan = self.config.privacy, self.config.training, self.sample_plan
        if plan is None:
            raise ValueError("sample-level DP needs the run's sample-level plan")
        client = task.client
        secret = seed if privacy.reproducible_noise else os.urandom(SECRET_SEED_BYTES)
        load_vector(self.model, global_vector)  # train_privately copies the model it is given
        result = train_privately(
            self.model,
            task.x,
            task.y,
            epochs=training.local_epochs,
            batch_size=training.batch_size,
            learning_rate=training.learning_rate,
            momentum=training.momentum,
            noise_multiplier=plan.noise[client],
            max_grad_norm=privacy.clip,
            max_physical_batch=privacy.max_physical_batch,
            ghost_clipping=privacy.ghost_clipping,
            seed=secret,
            device=self.device,
            sampling_rate=plan.sampling_rate[client],
            expected_batch_size=plan.expected_batch(client),
        )
        delta = (result.parameters - global_vector).numpy()
        # the weight is the released noisy count: nothing the server decodes depends on len(y)
        update = ClientUpdate(vector=delta, weight=plan.noisy_counts[client])
        return TrainedClient(client, update, result.seconds)
