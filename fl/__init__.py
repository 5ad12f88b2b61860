"""Federated learning on top of :mod:`secagg` and :mod:`dp`: the in-process engine, data, models,
privacy experiments, the Flower adapter and the ``privagg`` CLI.

Names are loaded on first use, so that light entry points (the CLI's protocol demo, the Flower
mod's protocol messages) do not import torch.

Example:
    >>> from fl import RunConfig, run_federation
    >>> config = RunConfig().with_overrides({"training.rounds": 3, "out": "runs/example"})
    >>> result = run_federation(config)  # doctest: +SKIP
    >>> result.summary["final_accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AggregateOutcome": "fl.core.aggregation",
    "ClientUpdate": "fl.core.aggregation",
    "plain_weighted_mean": "fl.core.aggregation",
    "secure_noisy_mean": "fl.core.aggregation",
    "secure_weighted_mean": "fl.core.aggregation",
    "DataConfig": "fl.core.config",
    "ModelConfig": "fl.core.config",
    "PrivacyConfig": "fl.core.config",
    "RunConfig": "fl.core.config",
    "SecureConfig": "fl.core.config",
    "TrainingConfig": "fl.core.config",
    "load_config": "fl.core.config",
    "FederatedData": "fl.core.data",
    "SyntheticClients": "fl.core.data",
    "build_federated_data": "fl.core.data",
    "DemoOutcome": "fl.cli.demo",
    "run_aggregation_demo": "fl.cli.demo",
    "BudgetError": "fl.errors",
    "CheckpointError": "fl.errors",
    "ConfigError": "fl.errors",
    "DataError": "fl.errors",
    "FLError": "fl.errors",
    "InputError": "fl.errors",
    "OutputError": "fl.errors",
    "CNN": "fl.core.models",
    "MLP": "fl.core.models",
    "RoundMetrics": "fl.core.report",
    "RunResult": "fl.engines.inprocess",
    "RunStart": "fl.engines.inprocess",
    "run_federation": "fl.engines.inprocess",
    "secure_average": "fl.plug",
    "plan_sweep": "fl.cli.sweep",
    "run_sweep": "fl.cli.sweep",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
