"""Simulated client speeds: the clock that synchronous and asynchronous runs are compared on.

Client k takes ``step_seconds * exp(sigma * z_k)`` simulated seconds per local step, with z_k a
standard normal drawn once from ``(seed, k)``: a lognormal spread of device speeds (a slow
device is slow in every round), as in the simulations of Nguyen et al. 2022. A task of s local
steps takes s times that. Nothing here sleeps: the times are only recorded.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["local_steps", "step_seconds", "task_seconds"]

_TAG = 0x5BEED


def step_seconds(client: int, *, seed: int, sigma: float, median: float) -> float:
    """Simulated seconds per local step of ``client``: ``median * exp(sigma * z)``."""
    z = float(np.random.default_rng([seed, _TAG, client]).standard_normal())
    return median * math.exp(sigma * z)


def local_steps(examples: int, *, epochs: int, batch_size: int) -> int:
    """Minibatch steps of ``epochs`` passes over ``examples`` examples."""
    return epochs * math.ceil(examples / batch_size)


def task_seconds(
    client: int,
    *,
    examples: int,
    epochs: int,
    batch_size: int,
    seed: int,
    sigma: float,
    median: float,
) -> float:
    """Simulated seconds ``client`` takes for ``epochs`` epochs over its examples."""
    steps = local_steps(examples, epochs=epochs, batch_size=batch_size)
    return steps * step_seconds(client, seed=seed, sigma=sigma, median=median)
