"""Worker processes for the in-process engine: a round's clients train, encode and run their
side of the protocol in parallel, one share of the cohort per process.

* :mod:`~fl.engines.pool.processes` - :class:`~fl.engines.pool.processes.WorkerPool`: starting,
  commanding and stopping the workers; failures as :class:`~fl.errors.WorkerError`;
* :mod:`~fl.engines.pool.shard` - what a worker holds and does for its clients;
* :mod:`~fl.engines.pool.training` - a round's training, balanced by the clients' sizes;
* :mod:`~fl.engines.pool.protocol` - a secure-aggregation round with the clients in the pool.
"""

from fl.engines.pool.processes import (
    MIN_CLIENTS_PER_WORKER,
    WorkerPool,
    available_cores,
    worker_count,
)
from fl.engines.pool.protocol import PooledProtocol
from fl.engines.pool.training import balance, train_cohort

__all__ = [
    "MIN_CLIENTS_PER_WORKER",
    "PooledProtocol",
    "WorkerPool",
    "available_cores",
    "balance",
    "train_cohort",
    "worker_count",
]
