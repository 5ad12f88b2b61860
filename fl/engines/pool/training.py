"""A round's local training spread over the worker processes, balanced by the clients' sizes."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence

import torch

from fl.core.aggregation import ClientUpdate
from fl.engines.local import ClientTask, TrainedClient
from fl.engines.pool.processes import WorkerPool

__all__ = ["balance", "train_cohort"]


def balance(tasks: Sequence[ClientTask], workers: int) -> list[list[ClientTask]]:
    """Deal the tasks to ``workers`` shares of about equal work (largest first to the least
    loaded share: Graham's LPT rule, within 4/3 of the best split). Work is counted in
    examples, which local training's cost grows with; ties keep the clients' order, so the
    split is the same every time."""
    shares: list[list[ClientTask]] = [[] for _ in range(workers)]
    loads = [(0, index) for index in range(workers)]
    order = sorted(range(len(tasks)), key=lambda i: (-tasks[i].examples, i))
    for i in order:
        load, index = heapq.heappop(loads)
        shares[index].append(tasks[i])
        heapq.heappush(loads, (load + max(1, tasks[i].examples), index))
    return shares


def train_cohort(
    pool: WorkerPool,
    round_index: int,
    starts: Mapping[int, torch.Tensor],
    tasks: Sequence[ClientTask],
    *,
    on_trained: Callable[[int], None] | None = None,
) -> dict[int, TrainedClient]:
    """Train every task's client in the pool, each from its start vector.

    Each client trains exactly as in the engine's own process (:class:`~fl.engines.local.
    LocalTrainer`: same seed, same work, same proximal term, same thread count), so the updates
    are the same bit for bit.

    Args:
        pool: the worker processes (started with the run's trainer).
        round_index: the round, 0-based.
        starts: the vectors the tasks train from, by key (``task.start``): the global model
            (:data:`~fl.engines.local.GLOBAL_START`), or the versions asynchronous clients
            pulled.
        tasks: the clients, their examples and their work.
        on_trained: called with each client's id as its training finishes.

    Returns:
        Each client's update and training seconds, by client id.

    Raises:
        WorkerError: a client's training raised, or a worker stopped; names the client.
    """
    missing = sorted({task.start for task in tasks} - set(starts))
    if missing:
        raise ValueError(f"no start vector for the keys {missing}: pass every task's start")
    shares = balance(tasks, pool.size)
    # bytes on the pipe, not shared memory; each worker gets only the starts its share needs
    vectors = {key: vector.detach().cpu().numpy() for key, vector in starts.items()}
    trained: dict[int, TrainedClient] = {}

    def collect(client: int, item: tuple) -> None:
        vector, weight, seconds = item
        trained[client] = TrainedClient(client, ClientUpdate(vector=vector, weight=weight), seconds)
        if on_trained is not None:
            on_trained(client)

    pool.call(
        "train",
        [
            (round_index, {t.start: vectors[t.start] for t in share}, share) if share else None
            for share in shares
        ],
        clients=[[task.client for task in share] for share in shares],
        round_index=round_index,
        on_item=collect,
    )
    return trained
