"""The secure-aggregation demo behind ``privagg aggregate``: one round, checked against plaintext."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import secagg
from secagg.graph import random_permutation
from secagg.randomness import DeterministicRandom, RandomSource, system_random

__all__ = ["DemoOutcome", "run_aggregation_demo"]

_INPUT_BITS = 16


@dataclass(frozen=True)
class DemoOutcome:
    """One demo round and its verdict.

    Attributes:
        result: the simulated round's sum, survivors and costs.
        dropouts: the clients told to drop out, by phase.
        correct: whether the unmasked sum equals the plaintext sum of the contributors' inputs.
    """

    result: secagg.AggregationResult
    dropouts: dict[secagg.Phase, tuple[int, ...]]
    correct: bool


def demo_inputs(clients: int, dim: int, seed: int) -> dict[int, np.ndarray]:
    """Reproducible 16-bit client vectors (demo data, not protocol randomness)."""
    stream = DeterministicRandom(seed).fork("demo-inputs")
    return {
        u: np.frombuffer(stream(4 * dim), dtype="<u4") >> np.uint32(32 - _INPUT_BITS)
        for u in range(1, clients + 1)
    }


def pick_dropouts(
    clients: int, count: int, phase: secagg.Phase, random_bytes: RandomSource
) -> dict[secagg.Phase, tuple[int, ...]]:
    """Choose ``count`` of the clients 1..clients uniformly to drop out in ``phase``."""
    if count == 0:
        return {}
    order = random_permutation(clients, random_bytes(32))
    return {phase: tuple(sorted(u + 1 for u in order[:count]))}


def run_aggregation_demo(
    *,
    clients: int,
    dim: int,
    dropout: float,
    dropout_phase: secagg.Phase,
    threshold: int | None = None,
    neighbours: int | None = None,
    ring_bits: int = 32,
    identities: bool = True,
    seed: int | None = None,
    progress: secagg.ProgressCallback | None = None,
) -> DemoOutcome:
    """Run one secure-aggregation round over ``clients`` in-process clients and check the sum.

    Args:
        clients: n, the number of clients.
        dim: d, the vector length.
        dropout: fraction of clients that drop out, in [0, 1).
        dropout_phase: the phase in which they drop out.
        threshold: t (default: recommended for n).
        neighbours: k (default: recommended for n).
        ring_bits: the ring Z_{2^b}.
        identities: sign keys and messages, and run the consistency check.
        seed: replay protocol randomness from this seed (demos only); ``None`` uses os.urandom.
        progress: optional ``progress(phase, done, total)`` callback.

    Raises:
        ValueError: ``dropout`` outside [0, 1).
        secagg.ThresholdNotMet: more dropouts than the threshold allows.
        secagg.ConfigurationError: invalid protocol parameters.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
    random_bytes = system_random if seed is None else DeterministicRandom(seed)
    inputs = demo_inputs(clients, dim, 0 if seed is None else seed)
    dropouts = pick_dropouts(clients, round(dropout * clients), dropout_phase, random_bytes)
    result = secagg.aggregate(
        inputs,
        threshold=threshold,
        neighbours=neighbours,
        ring_bits=ring_bits,
        identities=identities,
        dropouts=dropouts,
        rng=random_bytes,
        progress=progress,
    )
    expected = np.zeros(dim, dtype=np.uint64)
    for u in result.contributors:
        expected += inputs[u]
    expected &= np.uint64(result.config.ring_mask)
    correct = bool(np.array_equal(result.total.astype(np.uint64), expected))
    return DemoOutcome(result=result, dropouts=dropouts, correct=correct)
