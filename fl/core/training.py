"""The client's side of a round: local training from the global model, and its update."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fl.core.aggregation import ClientUpdate
from fl.core.config import Optimizer, TrainingConfig
from fl.core.params import load_vector, to_vector

__all__ = ["LocalResult", "train_locally"]


@dataclass(frozen=True, eq=False)
class LocalResult:
    """A client's update and what producing it cost."""

    update: ClientUpdate
    loss: float
    seconds: float


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
) -> LocalResult:
    """Train ``model`` from the global parameters on one client's examples.

    Args:
        model: a working copy (its parameters are overwritten with ``global_vector``).
        global_vector: the global model as a flat float32 vector.
        x, y: the client's examples.
        training: epochs, batch size, optimiser and learning rate.
        generator: seeds the minibatch order (one per client and round, for reproducibility).
        device: where to train.

    Returns:
        The update ``local - global`` with weight ``len(y)``, the mean training loss, the time.
    """
    started = time.perf_counter()
    load_vector(model, global_vector)
    model.to(device).train()
    optimizer = _optimizer(model, training)
    features = torch.as_tensor(x, device=device)
    labels = torch.as_tensor(y, device=device)
    losses = []
    for _ in range(training.local_epochs):
        order = torch.randperm(len(labels), generator=generator).to(device)
        for start in range(0, len(labels), training.batch_size):
            batch = order[start : start + training.batch_size]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(features[batch]), labels[batch])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    delta = (to_vector(model) - global_vector).numpy()
    return LocalResult(
        update=ClientUpdate(vector=delta, weight=len(y)),
        loss=float(np.mean(losses)),
        seconds=time.perf_counter() - started,
    )
