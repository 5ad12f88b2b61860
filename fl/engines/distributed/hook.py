"""A DDP communication hook: an existing ``DistributedDataParallel`` model, secure by one line.

::

    model = DistributedDataParallel(model)
    register_secure_hook(model)          # the one line; or, spelled out:
    # model.register_comm_hook(SecureHookState(SecureAllReduce()), secure_allreduce_hook)

DDP calls the hook once per gradient bucket, in bucket order. The hook holds each bucket until
the last one of the backward pass arrives, then sums all of them in one secure step (one set of
masks and store messages per backward pass, not per bucket) and divides by the number of ranks
whose gradients are in the sum, as DDP's default hook divides by the world size.

A lost rank: the secure step finishes with the survivors when it can (and the average divides by
them); DDP itself keeps no other collective in flight for models without buffers, so the other
ranks train on. Models with buffers (BatchNorm) make DDP broadcast them every forward pass over
its own process group, which a lost rank breaks: use :class:`~.engine.DistributedEngine` or
:func:`~.allreduce.secure_all_reduce` in your loop where ranks may be lost.
"""

from typing import Any

import torch
import torch.distributed as dist

from fl.engines.distributed.allreduce import ReduceReport, SecureAllReduce

__all__ = ["SecureHookState", "register_secure_hook", "secure_allreduce_hook"]


class SecureHookState:
    """The hook's state: the secure group, and the buckets of the backward pass in progress.

    Args:
        reducer: the :class:`~.allreduce.SecureAllReduce` of the model's process group.
        average: divide the sum by the number of contributing ranks (DDP's behaviour).
    """

    def __init__(self, reducer: SecureAllReduce, *, average: bool = True) -> None:
        self.reducer = reducer
        self.average = average
        self.last_report: ReduceReport | None = None
        self._pending: list[tuple[int, torch.Tensor, torch.futures.Future]] = []


# No ``from __future__ import annotations`` here: DDP checks the hook's annotations as objects.


def secure_allreduce_hook(
    state: SecureHookState, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: the average gradient over the ranks, each rank's masked.

    Register with ``model.register_comm_hook(state, secure_allreduce_hook)``.
    """
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    state._pending.append((bucket.index(), bucket.buffer(), future))
    if not bucket.is_last():
        return future
    pending = sorted(state._pending, key=lambda item: item[0])
    state._pending = []
    buffers = [buffer for _, buffer, _ in pending]
    try:
        report = state.reducer(buffers)
        if state.average:
            for buffer in buffers:
                buffer.div_(len(report.contributors))
        state.last_report = report
    except Exception as error:
        for _, _, waiting in pending:
            waiting.set_exception(error)
        return future
    for _, buffer, waiting in pending:
        waiting.set_result(buffer)
    return future


def register_secure_hook(
    model: torch.nn.parallel.DistributedDataParallel, **options: Any
) -> SecureHookState:
    """Make ``model``'s gradient all-reduce secure (call before the first backward pass).

    Args:
        model: the DDP model.
        options: passed to :class:`~.allreduce.SecureAllReduce` (clip, timeout, policy, ...).

    Returns:
        The hook state; ``state.last_report`` describes the last step.

    Example:
        >>> model = DistributedDataParallel(net)  # doctest: +SKIP
        >>> register_secure_hook(model)  # doctest: +SKIP
    """
    state = SecureHookState(SecureAllReduce(model.process_group, **options))
    model.register_comm_hook(state, secure_allreduce_hook)
    return state
