"""FedAvg (McMahan et al. 2017): cohort sampling, full local work for every client (stragglers
are dropped, the baseline of Li et al. 2020), applying the weighted mean update, evaluation."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import torch
from torch import nn

from fl.algorithms.base import Algorithm, LocalWork
from fl.core.config import AlgorithmName
from fl.core.params import load_vector, to_vector

__all__ = ["FedAvg", "FedAvgServer", "sample_cohort"]


class FedAvg(Algorithm):
    """Every client runs E epochs of plain local training; a straggler, which cannot finish
    them in time, is dropped from the round (the server does not wait for it).

    Example:
        >>> work = FedAvg().plan_work([1, 2, 3], epochs=5, stragglers={2}, generator=None)
        >>> sorted(work), work[1].epochs
        ([1, 3], 5)
    """

    name = AlgorithmName.FEDAVG

    @property
    def proximal_mu(self) -> None:
        return None

    def plan_work(
        self,
        cohort: Sequence[int],
        *,
        epochs: int,
        stragglers: Collection[int],
        generator: np.random.Generator | None,
    ) -> dict[int, LocalWork]:
        return {client: LocalWork(epochs) for client in cohort if client not in stragglers}


def sample_cohort(clients: int, size: int, generator: np.random.Generator) -> list[int]:
    """``size`` distinct client ids from 1..clients, uniformly, sorted."""
    return sorted(int(u) + 1 for u in generator.choice(clients, size=size, replace=False))


class FedAvgServer:
    """Holds the global model; applies weighted-mean updates with a server learning rate.

    With ``server_learning_rate = 1`` this is FedAvg (McMahan et al. 2017): the new global model
    is the weighted mean of the clients' local models.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        server_learning_rate: float = 1.0,
        device: torch.device | None = None,
    ) -> None:
        self.model = model
        self.server_learning_rate = server_learning_rate
        self.device = device or torch.device("cpu")
        self.global_vector = to_vector(model)

    def apply(self, mean_update: np.ndarray) -> None:
        """global <- global + server_learning_rate * mean_update."""
        step = torch.as_tensor(mean_update, dtype=torch.float64) * self.server_learning_rate
        self.global_vector = (self.global_vector.double() + step).float()
        load_vector(self.model, self.global_vector)

    def load(self, vector: torch.Tensor) -> None:
        """Replace the global model (resuming from a checkpoint)."""
        self.global_vector = vector.detach().to("cpu", torch.float32).clone()
        load_vector(self.model, self.global_vector)

    def evaluate(
        self, x: np.ndarray, y: np.ndarray, *, batch_size: int = 1024
    ) -> tuple[float, float]:
        """Accuracy and mean cross-entropy loss of the global model on ``(x, y)``."""
        self.model.to(self.device).eval()
        correct, loss = 0, 0.0
        with torch.no_grad():
            for start in range(0, len(y), batch_size):
                features = torch.as_tensor(x[start : start + batch_size], device=self.device)
                labels = torch.as_tensor(y[start : start + batch_size], device=self.device)
                scores = self.model(features)
                loss += float(nn.functional.cross_entropy(scores, labels, reduction="sum"))
                correct += int((scores.argmax(1) == labels).sum())
        return correct / len(y), loss / len(y)
