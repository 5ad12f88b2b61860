"""Weighted averaging of client updates (FedAvg, weights n_k / n): in the clear, or through the
secure-aggregation protocol so that only the sum is ever revealed."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

import secagg
from dp.distributed import DistributedNoiseEncoder
from dp.removable import NoiseSeeds, RemovableNoise
from fl.errors import InputError
from secagg.contribution import WeightRule
from secagg.encoding import FixedPointEncoder
from secagg.randomness import RandomSource, system_random

__all__ = [
    "AggregateOutcome",
    "ClientUpdate",
    "EncodedInput",
    "Encoding",
    "FixedPointEncoding",
    "NoisyEncoding",
    "ProtocolRunner",
    "contributes_in_the_clear",
    "finite_updates",
    "noise_ladder",
    "plain_weighted_mean",
    "revealer",
    "run_in_process",
    "secure_noisy_mean",
    "secure_weighted_mean",
    "system_sources",
]


@dataclass(frozen=True, eq=False)
class ClientUpdate:
    """One client's flat float update (``local - global``) and its weight (example count)."""

    vector: np.ndarray
    weight: int


@dataclass(frozen=True, eq=False)
class AggregateOutcome:
    """A weighted mean and what computing it cost.

    Attributes:
        mean: the weighted mean update (float64).
        contributors: the clients whose updates are in ``mean``.
        total_weight: the sum of their weights.
        bytes_up: bytes the clients sent; bytes_down: bytes sent to them.
        seconds: wall time of encoding, the protocol and decoding (0 in the clear).
        error_bound: elementwise bound on the distance to the exact weighted mean of the
            clipped updates (0 in the clear, infinite with DP noise).
        noise_variance_left: with exact noise, the variance per coordinate (scaled ring units)
            of the noise left in the sum after removal; None otherwise.
        noise_ladder: with exact noise, the removable split the clients drew their noise with.
    """

    mean: np.ndarray
    contributors: frozenset[int]
    total_weight: int
    bytes_up: int
    bytes_down: int
    seconds: float
    error_bound: float
    noise_variance_left: float | None = None
    noise_ladder: RemovableNoise | None = None


def system_sources(_client: int) -> RandomSource:
    """Every client's randomness from :func:`os.urandom` (the default)."""
    return system_random


@dataclass(frozen=True, eq=False)
class EncodedInput:
    """One client's encoded input: its ring words and, with exact noise, the secret seeds of
    its removable noise (kept by whoever holds the client until it reveals some of them)."""

    words: np.ndarray
    seeds: NoiseSeeds | None = None


@dataclass(frozen=True, eq=False)
class FixedPointEncoding:
    """How each client turns its update into ring words for the weighted mean: clip, quantise
    and pack ``[w, w*q]`` (:class:`~secagg.encoding.FixedPointEncoder`).

    Picklable whenever ``random`` is (a module-level function or class instance, not a lambda),
    so a worker process can encode its clients' updates.

    Attributes:
        encoder: the round's encoder.
        random: ``client id -> random source`` for stochastic rounding.
        weight: the weight every client encodes (central DP: 1); None: each update's own.
    """

    encoder: FixedPointEncoder
    random: Callable[[int], RandomSource] = system_sources
    weight: int | None = None

    def __post_init__(self) -> None:
        if self.weight not in (None, 1):
            raise ValueError(f"weight must be None (each update's own) or 1, got {self.weight}")

    @property
    def ladder(self) -> None:
        """No removable noise: the weighted mean adds none."""
        return None

    @property
    def contribution(self) -> secagg.Contribution:
        """The session's contribution: this encoding and its weight rule."""
        rule = WeightRule.EXAMPLES if self.weight is None else WeightRule.EQUAL
        return self.encoder.contribution(weights=rule)

    def __call__(self, client: int, update: ClientUpdate) -> EncodedInput:
        """Client ``client``'s ring vector."""
        weight = update.weight if self.weight is None else self.weight
        return EncodedInput(
            self.encoder.encode(update.vector, weight=weight, random_bytes=self.random(client))
        )


@dataclass(frozen=True, eq=False)
class NoisyEncoding:
    """How each client clips, rotates, rounds and noises its update for client-level DP
    (:class:`~dp.distributed.DistributedNoiseEncoder`); picklable as :class:`FixedPointEncoding`.

    Attributes:
        encoder: the round's encoder.
        rotation_seed: the round's public rotation seed.
        random: ``client id -> random source`` for rounding and noise.
        ladder: with exact noise, the removable split of each client's share (Dordis, EuroSys
            2024; :mod:`dp.removable`): the client draws fresh secret seeds for its ladder.
    """

    encoder: DistributedNoiseEncoder
    rotation_seed: bytes
    random: Callable[[int], RandomSource] = system_sources
    ladder: RemovableNoise | None = None

    @property
    def contribution(self) -> secagg.Contribution:
        """The session's contribution: the noise encoding and its rotation seed."""
        return self.encoder.contribution(rotation_seed=self.rotation_seed)

    def __call__(self, client: int, update: ClientUpdate) -> EncodedInput:
        """Client ``client``'s ring vector, its noise share included (and its ladder seeds)."""
        seeds = noise = None
        if self.ladder is not None:
            seeds = NoiseSeeds.generate(self.ladder, self.random(client))
            noise = seeds.noise(self.ladder, self.encoder.padded, self.random(client))
        words = self.encoder.encode(
            update.vector,
            rotation_seed=self.rotation_seed,
            random_bytes=self.random(client),
            noise=noise,
        )
        return EncodedInput(words, seeds)


Encoding = FixedPointEncoding | NoisyEncoding

ProtocolRunner = Callable[..., secagg.AggregationResult]
"""``runner(updates, encoding, **protocol) -> secagg.AggregationResult``: encode each client's
update with ``encoding`` and run one secure-aggregation round on the results, with the keyword
arguments of :func:`secagg.aggregate` (less ``noise_removal``: with ``encoding.ladder`` set and
identities on, each client answers the noise-removal request from its own seeds).
:func:`run_in_process` does both here, client after client; :class:`fl.engines.pool.
PooledProtocol` does the clients' side in worker processes."""


def revealer(
    ladder: RemovableNoise, seeds: NoiseSeeds
) -> Callable[[int], tuple[tuple[int, bytes], ...]]:
    """A client's ``reveal(m)`` answer to noise removal: the seeds of the ladder components its
    certified honest floor ``m`` makes unnecessary (:meth:`dp.removable.RemovableNoise.removal`)."""
    return lambda honest_floor: seeds.reveal(ladder.removal(honest_floor))


def run_in_process(
    updates: Mapping[int, ClientUpdate], encoding: Encoding, **protocol: object
) -> secagg.AggregationResult:
    """The default :data:`ProtocolRunner`: every client encodes, then :func:`secagg.aggregate`
    runs all parties in this process (and the clients' noise removal, with a ladder)."""
    encoded = {u: encoding(u, update) for u, update in updates.items()}
    ladder = encoding.ladder
    removal = None
    if ladder is not None:
        removal = {u: revealer(ladder, e.seeds) for u, e in encoded.items()}
    return secagg.aggregate(
        {u: e.words for u, e in encoded.items()},
        noise_removal=removal,
        contribution=encoding.contribution,
        **protocol,
    )


def contributes_in_the_clear(phase: secagg.Phase | None) -> bool:
    """Whether a client that drops out in ``phase`` still delivers its update (None: no dropout).

    Matches the protocol: a client whose masked input arrived counts, whatever happens later.
    """
    return phase is None or phase in (secagg.Phase.CONSISTENCY_CHECK, secagg.Phase.UNMASK)


def finite_updates(
    updates: Mapping[int, ClientUpdate],
) -> tuple[dict[int, ClientUpdate], tuple[int, ...]]:
    """Split off the updates that hold NaN or infinite values (a client whose training diverged).

    Returns:
        The finite updates, and the ids of the clients left out, sorted.
    """
    left_out = tuple(sorted(u for u, update in updates.items() if not _finite(update.vector)))
    return {u: v for u, v in updates.items() if u not in left_out}, left_out


def _finite(vector: np.ndarray) -> bool:
    # the sum is finite only if every element is (and is far cheaper than an elementwise mask)
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.sum(vector, dtype=np.float64)))


def plain_weighted_mean(
    updates: Mapping[int, ClientUpdate], *, dropouts: Mapping[int, secagg.Phase] | None = None
) -> AggregateOutcome:
    """FedAvg in the clear: sum_k n_k x_k / sum_k n_k over the clients that deliver.

    Raises:
        secagg.ThresholdNotMet: no client delivered.
        InputError: an update holds NaN or infinite values.
    """
    dropouts = dropouts or {}
    _, non_finite = finite_updates(updates)
    if non_finite:
        raise InputError(
            f"the updates of clients {list(non_finite)} hold NaN or infinite values; leave them "
            "out (fl.core.aggregation.finite_updates) instead of averaging them"
        )
    contributors = [u for u in sorted(updates) if contributes_in_the_clear(dropouts.get(u))]
    if not contributors:
        raise secagg.ThresholdNotMet("no client delivered its update")
    total = sum(updates[u].weight for u in contributors)
    mean = (
        sum(updates[u].vector.astype(np.float64) * updates[u].weight for u in contributors) / total
    )
    size = next(iter(updates.values())).vector.size
    return AggregateOutcome(
        mean=np.asarray(mean, dtype=np.float64),
        contributors=frozenset(contributors),
        total_weight=total,
        bytes_up=len(contributors) * (4 * size + 8),
        bytes_down=0,
        seconds=0.0,
        error_bound=0.0,
    )


def _phases_to_clients(dropouts: Mapping[int, secagg.Phase]) -> dict[secagg.Phase, list[int]]:
    by_phase: dict[secagg.Phase, list[int]] = {}
    for client, phase in dropouts.items():
        by_phase.setdefault(phase, []).append(client)
    return by_phase


def _outcome(
    result: secagg.AggregationResult,
    *,
    mean: np.ndarray,
    total_weight: int,
    started: float,
    error_bound: float,
) -> AggregateOutcome:
    """Package a protocol round's decoded mean with its traffic and time."""
    clients = [u for u in result.bytes_sent if u != secagg.messages.SERVER_ID]
    return AggregateOutcome(
        mean=mean,
        contributors=result.contributors,
        total_weight=total_weight,
        bytes_up=sum(result.bytes_sent[u] for u in clients),
        bytes_down=result.bytes_sent[secagg.messages.SERVER_ID],
        seconds=time.perf_counter() - started,
        error_bound=error_bound,
    )


def secure_weighted_mean(
    updates: Mapping[int, ClientUpdate],
    *,
    max_weight: int,
    clip: float,
    precision_bits: int = 16,
    ring_bits: int | None = None,
    threshold: int | None = None,
    neighbours: int | None = None,
    identities: bool = False,
    dropouts: Mapping[int, secagg.Phase] | None = None,
    round_index: int = 0,
    policy: secagg.ClientPolicy | None = None,
    rounding_random: Callable[[int], RandomSource] | None = None,
    progress: secagg.ProgressCallback | None = None,
    runner: ProtocolRunner | None = None,
) -> AggregateOutcome:
    """The weighted mean of the updates, computed by secure aggregation of ``[w, w*q]``.

    Each update is clipped, quantised and packed by :class:`~secagg.encoding.FixedPointEncoder`,
    masked by its client and summed by the protocol; the server decodes the mean from the sum
    alone. The result is within ``2^-precision_bits`` of the exact weighted mean of the clipped
    updates, elementwise.

    Args:
        updates: each client's update and weight, by client id.
        max_weight: the public bound on any weight (larger weights are an error).
        clip: elementwise clipping range of the updates.
        precision_bits: fixed-point precision p.
        ring_bits: the ring; unset picks 32 or 64 bits, whichever holds the sum.
        threshold, neighbours, identities: protocol parameters (see :func:`secagg.aggregate`).
        dropouts: the phase in which each dropping client vanishes.
        round_index: bound into the session.
        policy: the floors every client holds (secure defaults when omitted).
        rounding_random: ``client id -> random source`` for stochastic rounding (``os.urandom``
            unless a reproducible simulation seeds it).
        progress: per-phase progress callback of the protocol.
        runner: where the clients encode and run their side of the protocol
            (:func:`run_in_process` by default).

    Raises:
        secagg.ThresholdNotMet: too many dropouts; no mean is released.
        secagg.PolicyViolation: the parameters are below the clients' policy.
        secagg.ConfigurationError: parameters that could wrap around the ring.
    """
    started = time.perf_counter()
    (secagg.ClientPolicy() if policy is None else policy).check_encoding(
        secagg.Encoding.FIXED_POINT
    )
    if ring_bits is None:
        needed = FixedPointEncoder.required_ring_bits(
            len(updates), max_weight, clip, precision_bits
        )
        ring_bits = 32 if needed <= 32 else 64
    encoder = FixedPointEncoder(
        num_clients=len(updates),
        max_weight=max_weight,
        clip=clip,
        precision_bits=precision_bits,
        ring_bits=ring_bits,
    )
    result = (runner or run_in_process)(
        updates,
        FixedPointEncoding(encoder, rounding_random or system_sources),
        threshold=threshold,
        neighbours=neighbours,
        ring_bits=ring_bits,
        input_bound=encoder.entry_bound,
        identities=identities,
        dropouts=_phases_to_clients(dropouts or {}),
        round_index=round_index,
        policy=policy,
        progress=progress,
    )
    return _outcome(
        result,
        mean=encoder.decode(result.total),
        total_weight=encoder.decode_weight(result.total),
        started=started,
        error_bound=encoder.error_bound,
    )


def secure_noisy_mean(
    updates: Mapping[int, ClientUpdate],
    *,
    encoder: DistributedNoiseEncoder,
    rotation_seed: bytes,
    threshold: int | None = None,
    neighbours: int | None = None,
    identities: bool = False,
    dropouts: Mapping[int, secagg.Phase] | None = None,
    round_index: int = 0,
    policy: secagg.ClientPolicy | None = None,
    noise_random: Callable[[int], RandomSource] | None = None,
    progress: secagg.ProgressCallback | None = None,
    runner: ProtocolRunner | None = None,
    exact_noise: bool = False,
) -> AggregateOutcome:
    """Client-level DP mean: each client clips, rounds and adds its share of integer noise
    (:class:`dp.distributed.DistributedNoiseEncoder`) before masking, so the unmasked sum is
    already noisy; the server divides it by the number of contributors (equal weights).

    With ``exact_noise`` (identities and Skellam required) each client draws its share as a
    base plus removable components (:mod:`dp.removable`) and, after the round, reveals the
    seeds of those its certified survivors make unnecessary (:mod:`secagg.removal`); the server
    subtracts them, and ``noise_variance_left`` records what stays. The seeds stay with the
    party that holds the client (this process, or its worker under a pool's runner) until the
    client reveals them.

    ``progress`` and ``runner`` are as for :func:`secure_weighted_mean`.

    Raises:
        secagg.ThresholdNotMet: too many dropouts; nothing is released.
        secagg.PolicyViolation: the parameters (noise included) are below the clients' policy.
    """
    started = time.perf_counter()
    policy = secagg.ClientPolicy() if policy is None else policy
    policy.check_encoding(secagg.Encoding.DISTRIBUTED_DP)
    shape = secagg.SecAggConfig.create(
        range(1, len(updates) + 1), 1, threshold=threshold, neighbours=neighbours
    )
    policy.check_noise(
        shape, noise_multiplier=encoder.noise_multiplier, noise_shares=encoder.noise_shares
    )
    ladder = None
    if exact_noise:
        if not identities:
            raise InputError(
                "exact noise under dropouts needs identities: only signed survivor sets can "
                "be certified (set identities, or turn exact noise off)"
            )
        ladder = noise_ladder(encoder, shape, policy)
    result = (runner or run_in_process)(
        updates,
        NoisyEncoding(encoder, rotation_seed, noise_random or system_sources, ladder),
        threshold=threshold,
        neighbours=neighbours,
        ring_bits=encoder.ring_bits,
        identities=identities,
        dropouts=_phases_to_clients(dropouts or {}),
        round_index=round_index,
        policy=policy,
        progress=progress,
    )
    total, variance_left = result.total, None
    if ladder is not None:
        total, variance_left = _remove_noise(result, ladder, encoder)
    contributors = len(result.contributors)
    outcome = _outcome(
        result,
        mean=encoder.decode(total, contributors=contributors, rotation_seed=rotation_seed),
        total_weight=contributors,
        started=started,
        error_bound=math.inf,
    )
    return replace(outcome, noise_variance_left=variance_left, noise_ladder=ladder)


def noise_ladder(
    encoder: DistributedNoiseEncoder, shape: secagg.SecAggConfig, policy: secagg.ClientPolicy
) -> RemovableNoise:
    """The removable split of each client's noise share for a session shaped like ``shape``:
    a certified sum holds at most k + 1 - c honest clients (a closed neighbourhood less its
    corrupt members), which sizes the base share."""
    return encoder.removable(most_honest=shape.neighbours + 1 - policy.corrupt_neighbours(shape))


def _remove_noise(
    result: secagg.AggregationResult, ladder: RemovableNoise, encoder: DistributedNoiseEncoder
) -> tuple[np.ndarray, float]:
    """Subtract every revealed component from the sum; the variance left in it (ring units)."""
    excess = np.zeros(encoder.padded, dtype=np.int64)
    left = 0.0
    for u in result.contributors:
        answer = result.noise_removal.get(u)
        revealed = dict(answer.seeds) if answer is not None else {}
        excess += ladder.excess(revealed, encoder.padded)
        left += ladder.variance_left(tuple(revealed))
    total = (result.total.astype(np.uint64) - encoder.to_ring(excess)) & np.uint64(
        (1 << encoder.ring_bits) - 1
    )
    return total, left
