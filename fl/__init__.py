"""Federated learning on top of :mod:`secagg`: the in-process engine, data, models and the CLI.

Example:
    >>> from fl import RunConfig, run_federation
    >>> config = RunConfig().with_overrides({"training.rounds": 3, "out": "runs/example"})
    >>> result = run_federation(config)  # doctest: +SKIP
    >>> result.summary["final_accuracy"]  # doctest: +SKIP
"""

from fl.aggregation import (
    AggregateOutcome,
    ClientUpdate,
    plain_weighted_mean,
    secure_weighted_mean,
)
from fl.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    SecureConfig,
    TrainingConfig,
    load_config,
)
from fl.data import FederatedData, build_federated_data
from fl.demo import DemoOutcome, run_aggregation_demo
from fl.errors import ConfigError, DataError, FLError
from fl.models import CNN, MLP
from fl.report import RoundMetrics
from fl.simulation import RunResult, run_federation

__all__ = [
    "CNN",
    "MLP",
    "AggregateOutcome",
    "ClientUpdate",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DemoOutcome",
    "FLError",
    "FederatedData",
    "ModelConfig",
    "RoundMetrics",
    "RunConfig",
    "RunResult",
    "SecureConfig",
    "TrainingConfig",
    "build_federated_data",
    "load_config",
    "plain_weighted_mean",
    "run_aggregation_demo",
    "run_federation",
    "secure_weighted_mean",
]
