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
    "AggregateOutcome": "fl.aggregation",
    "ClientUpdate": "fl.aggregation",
    "plain_weighted_mean": "fl.aggregation",
    "secure_noisy_mean": "fl.aggregation",
    "secure_weighted_mean": "fl.aggregation",
    "DataConfig": "fl.config",
    "ModelConfig": "fl.config",
    "PrivacyConfig": "fl.config",
    "RunConfig": "fl.config",
    "SecureConfig": "fl.config",
    "TrainingConfig": "fl.config",
    "load_config": "fl.config",
    "FederatedData": "fl.data",
    "build_federated_data": "fl.data",
    "DemoOutcome": "fl.demo",
    "run_aggregation_demo": "fl.demo",
    "BudgetError": "fl.errors",
    "CheckpointError": "fl.errors",
    "ConfigError": "fl.errors",
    "DataError": "fl.errors",
    "FLError": "fl.errors",
    "InputError": "fl.errors",
    "OutputError": "fl.errors",
    "CNN": "fl.models",
    "MLP": "fl.models",
    "RoundMetrics": "fl.report",
    "RunResult": "fl.simulation",
    "RunStart": "fl.simulation",
    "run_federation": "fl.simulation",
    "secure_average": "fl.plug",
    "plan_sweep": "fl.sweep",
    "run_sweep": "fl.sweep",
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
