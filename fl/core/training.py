"""The client's side of a round: local training from the global model, and its update.

With a proximal weight ``mu`` (FedProx, Li et al. 2020, Eq. 2) the client minimises
``F_k(w) + (mu / 2) ||w - w_global||^2``: every step adds ``mu (w - w_global)`` to the
minibatch gradient before the optimiser's step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fl.core.aggregation import ClientUpdate
from fl.core.config import Optimizer, TrainingConfig
from fl.core.params import load_vector, to_vector

__all__ = ["LocalResult", "ProximalTerm", "train_locally"]


@dataclass(frozen=True, eq=False)
class LocalResult:
    """A client's update and what producing it cost."""

    update: ClientUpdate
    loss: float
    seconds: float


class ProximalTerm:
    """FedProx's proximal term (mu / 2) ||w - w_global||^2 for one model (Li et al. 2020, Eq. 2).

    Args:
        model: the model being trained.
        global_vector: w_global as a flat vector (the layout of :func:`fl.core.params.to_vector`).
        mu: the proximal weight (0 leaves every gradient as it is).
    """

    def __init__(self, model: nn.Module, global_vector: torch.Tensor, mu: float) -> None:
        self.mu = float(mu)
        parameters = list(model.parameters())
        pieces = torch.split(global_vector, [p.numel() for p in parameters])
        self._pairs = [
            (p, g.reshape(p.shape).to(p.device, p.dtype))
            for p, g in zip(parameters, pieces, strict=True)
        ]

    def value(self) -> torch.Tensor:
        """(mu / 2) ||w - w_global||^2 at the model's current parameters."""
        total = sum(((p - g) ** 2).sum() for p, g in self._pairs)
        return 0.5 * self.mu * total

    @torch.no_grad()
    def add_gradient(self) -> None:
        """Add the term's gradient, mu (w - w_global), to every parameter's ``.grad``."""
        for parameter, anchor in self._pairs:
            if parameter.grad is not None:
                parameter.grad.add_(parameter - anchor, alpha=self.mu)


def _optimizer(model: nn.Module, training: TrainingConfig) -> torch.optim.Optimizer:
    if training.optimizer is Optimizer.ADAM:
        return torch.optim.Adam(model.parameters(), lr=training.learning_rate)
    return torch.optim.SGD(
        model.parameters(), lr=training.learning_rate, momentum=training.momentum
    )


def train_locally(
    model: nn.Module,
    global_vector: torch.Tensor,
    x: np.ndarray,
    y: np.ndarray,
    *,
    training: TrainingConfig,
    generator: torch.Generator,
    device: torch.device,
    epochs: int | None = None,
    proximal_mu: float | None = None,
) -> LocalResult:
    """Train ``model`` from the global parameters on one client's examples.

    Args:
        model: a working copy (its parameters are overwritten with ``global_vector``).
        global_vector: the global model as a flat float32 vector.
        x, y: the client's examples.
        training: epochs, batch size, optimiser and learning rate.
        generator: seeds the minibatch order (one per client and round, for reproducibility).
        device: where to train.
        epochs: local epochs of this client (default ``training.local_epochs``; fewer for a
            FedProx straggler's partial work).
        proximal_mu: FedProx's proximal weight (None: plain local training, as FedAvg).

    Returns:
        The update ``local - global`` with weight ``len(y)``, the mean training loss, the time.
    """
    started = time.perf_counter()
    load_vector(model, global_vector)
    model.to(device).train()
    optimizer = _optimizer(model, training)
    proximal = (
        None if proximal_mu is None else ProximalTerm(model, global_vector.to(device), proximal_mu)
    )
    features = torch.as_tensor(x, device=device)
    labels = torch.as_tensor(y, device=device)
    losses = []
    for _ in range(training.local_epochs if epochs is None else epochs):
        order = torch.randperm(len(labels), generator=generator).to(device)
        for start in range(0, len(labels), training.batch_size):
            batch = order[start : start + training.batch_size]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(features[batch]), labels[batch])
            loss.backward()
            if proximal is not None:
                proximal.add_gradient()
            optimizer.step()
            losses.append(loss.item())
    delta = (to_vector(model) - global_vector).numpy()
    return LocalResult(
        update=ClientUpdate(vector=delta, weight=len(y)),
        loss=float(np.mean(losses)),
        seconds=time.perf_counter() - started,
    )
