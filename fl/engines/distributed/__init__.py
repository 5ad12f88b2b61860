"""Secure data-parallel training on torch.distributed: every rank's gradient stays masked.

* :func:`secure_all_reduce` / :class:`SecureAllReduce` - the sum ``dist.all_reduce(op=SUM)``
  gives, through a multi-step secure-aggregation session (:mod:`secagg.multistep`): keys agreed
  once, fresh masks every step, gloo carrying only masked words;
* :func:`secure_allreduce_hook` / :func:`register_secure_hook` - a DDP communication hook, so an
  existing ``DistributedDataParallel`` model is secure by one line;
* :class:`DistributedEngine` - the four steps of :class:`fl.engines.base.Engine` on ranks;
* :class:`ParameterServer` / :class:`AsyncWorker` - asynchronous SGD with a buffer of K masked
  contributions;
* :func:`make_private_rank` - sample-level DP-SGD (Opacus) on every rank, the noisy gradients
  summed securely, each rank's epsilon in its own ledger.

SECURITY.md ("Secure data-parallel training") states what is protected and under which
conditions; README's section of the same name shows the one-line change.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DISTRIBUTED_POLICY": "fl.engines.distributed.allreduce",
    "ReduceReport": "fl.engines.distributed.allreduce",
    "SecureAllReduce": "fl.engines.distributed.allreduce",
    "secure_all_reduce": "fl.engines.distributed.allreduce",
    "GradientEncoding": "fl.engines.distributed.encoding",
    "RankExcluded": "fl.engines.distributed.errors",
    "RanksLost": "fl.engines.distributed.errors",
    "StoreUnavailable": "fl.engines.distributed.errors",
    "SecureHookState": "fl.engines.distributed.hook",
    "register_secure_hook": "fl.engines.distributed.hook",
    "secure_allreduce_hook": "fl.engines.distributed.hook",
    "DistributedEngine": "fl.engines.distributed.engine",
    "PrivateRank": "fl.engines.distributed.private",
    "SecurePrivateOptimizer": "fl.engines.distributed.private",
    "make_private_rank": "fl.engines.distributed.private",
    "AsyncWorker": "fl.engines.distributed.asynchronous",
    "ParameterServer": "fl.engines.distributed.asynchronous",
    "staleness_weight": "fl.engines.distributed.asynchronous",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fl.engines.distributed' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
