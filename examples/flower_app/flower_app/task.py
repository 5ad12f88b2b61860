"""The model and data shared by the ServerApp and the ClientApp."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord

from fl.algorithms.fedavg import FedAvgServer
from fl.core.config import DataConfig, TrainingConfig
from fl.core.data import FederatedData, build_federated_data
from fl.core.models import MLP


def model() -> torch.nn.Module:
    """The digits MLP (same initial weights everywhere)."""
    torch.manual_seed(0)
    return MLP(64, 10, hidden=64)


def data(num_partitions: int) -> FederatedData:
    """scikit-learn's digits (shipped with the package), split IID among the nodes."""
    return build_federated_data(DataConfig(partition="iid"), clients=num_partitions, seed=0)


def to_arrays(module: torch.nn.Module) -> ArrayRecord:
    return ArrayRecord(module.state_dict())


def load_arrays(module: torch.nn.Module, arrays: ArrayRecord) -> None:
    module.load_state_dict(arrays.to_torch_state_dict())


def evaluate(arrays: ArrayRecord, num_partitions: int) -> tuple[float, float]:
    """Test accuracy and loss of the global model."""
    module = model()
    load_arrays(module, arrays)
    split = data(num_partitions)
    return FedAvgServer(module).evaluate(split.test_x, split.test_y)


def training(local_epochs: int, learning_rate: float) -> TrainingConfig:
    return TrainingConfig(local_epochs=local_epochs, learning_rate=learning_rate, batch_size=16)


def examples(num_partitions: int, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    return data(num_partitions).client_arrays(partition_id + 1)
