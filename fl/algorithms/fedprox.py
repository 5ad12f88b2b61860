"""FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020).

Two changes to FedAvg, both on the clients' side:

* **proximal term**: client k minimises h_k(w) = F_k(w) + (mu / 2) ||w - w_global||^2
  (Eq. 2), which keeps local models near the global one when clients' data differ
  (:class:`fl.core.training.ProximalTerm`);
* **partial work**: a straggler is not dropped; it runs a number of epochs drawn uniformly from
  1 to E - 1 (Sec. 5.2, as the paper's experiments) and its update is averaged like the others.

With ``mu = 0`` and no stragglers FedProx is FedAvg, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np

from fl.algorithms.base import Algorithm, LocalWork
from fl.core.config import AlgorithmName

__all__ = ["FedProx"]


class FedProx(Algorithm):
    """FedProx with proximal weight ``mu``.

    Args:
        mu: the proximal weight (>= 0; the paper tries 0.001 to 1).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> work = FedProx(mu=1.0).plan_work([1, 2], epochs=20, stragglers={2}, generator=rng)
        >>> work[1].epochs, 1 <= work[2].epochs < 20, work[2].partial
        (20, True, True)
    """

    name = AlgorithmName.FEDPROX

    def __init__(self, mu: float) -> None:
        if not (mu >= 0 and math.isfinite(mu)):
            raise ValueError(f"FedProx's mu must be a finite number >= 0, got {mu}")
        self.mu = float(mu)

    @property
    def proximal_mu(self) -> float:
        return self.mu

    def plan_work(
        self,
        cohort: Sequence[int],
        *,
        epochs: int,
        stragglers: Collection[int],
        generator: np.random.Generator,
    ) -> dict[int, LocalWork]:
        if stragglers and epochs < 2:
            raise ValueError(
                f"a straggler runs 1 to E - 1 epochs, and E = {epochs}: use at least 2 epochs"
            )
        work = {}
        for client in cohort:
            if client in stragglers:
                work[client] = LocalWork(int(generator.integers(1, epochs)), partial=True)
            else:
                work[client] = LocalWork(epochs)
        return work
