"""Federated learning on top of :mod:`secagg`: simulation engine, demos and the ``privagg`` CLI."""

from fl.demo import DemoOutcome, run_aggregation_demo

__all__ = ["DemoOutcome", "run_aggregation_demo"]
