"""Central differential privacy: the clients clip, a trusted aggregator adds the noise.

DP-FedAvg with a trusted aggregator (McMahan et al., "Learning Differentially Private Recurrent
Language Models", ICLR 2018): each client scales its update to L2 norm at most C and encodes it
with weight 1 (client-side fixed clipping, which secure aggregation leaves intact); the server
unmasks the sum of the Poisson-sampled cohort's updates, adds discrete Gaussian noise of
standard deviation z * Delta to it *once*, and divides by the expected cohort size q N (the
fixed-denominator estimator, so the released model depends on the noisy sum only, not on how
many clients took part).

Delta is the L2 sensitivity in the domain the noise is added in, the scaled integers of the
fixed-point encoding: a client's rounded vector q = SR(x 2^p) with ||x||_2 <= C is within 1 of
x 2^p in every coordinate, so ||q||_2 <= C 2^p + sqrt(d). The discrete Gaussian is at least as
private as the continuous one of the same variance (Canonne, Kamath, Steinke 2020, Thm. 4), so
a round is the Poisson-sampled Gaussian mechanism with noise multiplier z (what
:class:`dp.ledger.CentralEntry` records).

What this trusts: the aggregator sees the noise-free sum (SECURITY.md, "Central DP"). The
guarantee holds against everyone who sees only the released models; against the server there
is none. Compare client level (:mod:`dp.distributed`): there the clients add the noise before
masking and no party ever sees a noise-free sum, at the price of noise sized for t - c honest
clients and no amplification by sampling against the server.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

import secagg
from dp.accounting import ProgressCallback, calibrate
from dp.ledger import CentralEntry, PrivacyLedger, PrivacyLevel
from dp.samplers import sample_discrete_gaussian
from fl.core.aggregation import (
    AggregateOutcome,
    ClientUpdate,
    FixedPointEncoding,
    contributes_in_the_clear,
    run_in_process,
    system_sources,
)
from fl.core.config import RunConfig
from fl.core.privacy import require_client_delta
from fl.errors import ConfigError
from secagg.encoding import FixedPointEncoder
from secagg.randomness import RandomSource, system_random
from secagg.ring import to_signed

__all__ = [
    "CentralPlan",
    "add_central_noise",
    "central_encoder",
    "central_noisy_mean",
    "central_sensitivity",
    "plan_central",
]

_SAFE = 1 << 62  # the noisy sum is formed in int64


def central_sensitivity(*, clip: float, precision_bits: int, dimension: int) -> float:
    """Delta = C 2^p + sqrt(d): the largest L2 norm of one client's rounded, scaled update."""
    return clip * 2.0**precision_bits + math.sqrt(dimension)


@dataclass(frozen=True)
class CentralPlan:
    """The calibrated noise of a central-DP run.

    Attributes:
        sampling_rate: q, each client's probability of being in a round (cohort / clients).
        noise_multiplier: z; the server's noise has standard deviation z * Delta.
        sensitivity: Delta, in scaled integers (:func:`central_sensitivity`).
        clients: N, the federation's size (q N is the fixed denominator).
        precision_bits: p, the fixed-point scale of the encoding.
    """

    sampling_rate: float
    noise_multiplier: float
    sensitivity: float
    clients: int
    precision_bits: int

    @property
    def noise_std(self) -> float:
        """Standard deviation of the server's noise, per coordinate, in scaled integers."""
        return self.noise_multiplier * self.sensitivity

    @property
    def denominator(self) -> float:
        """q N, the expected cohort size the noisy sum is divided by."""
        return self.sampling_rate * self.clients

    def entry(self, round_index: int, participants: tuple[int, ...] = ()) -> CentralEntry:
        """The ledger entry of round ``round_index`` (0-based)."""
        return CentralEntry(
            round=round_index + 1,
            client_sampling_rate=self.sampling_rate,
            noise_multiplier=self.noise_multiplier,
            l2_sensitivity=self.sensitivity,
            participants=participants,
        )


def _epsilon(config: RunConfig, rate: float, z: float, rounds: int) -> float:
    ledger = PrivacyLedger(
        level=PrivacyLevel.CENTRAL,
        delta=config.privacy.delta,
        accountant=config.privacy.accountant,
    )
    for index in range(rounds):  # the sensitivity is in the noise multiplier: 1 here
        ledger.record_central(CentralEntry(index + 1, rate, z, 1.0))
    return ledger.spent().headline


def plan_central(
    config: RunConfig, dimension: int, *, progress: ProgressCallback | None = None
) -> CentralPlan:
    """Calibrate the server's noise for the target epsilon over ``training.rounds`` rounds,
    each the Poisson-sampled Gaussian with rate q = cohort / clients (or take the given noise
    multiplier).

    Raises:
        ConfigError: delta not below 1 / clients, or an unreachable target.
    """
    privacy, training = config.privacy, config.training
    require_client_delta(config)
    rate = training.cohort_size / training.clients
    if privacy.noise_multiplier is not None:
        z = privacy.noise_multiplier
    else:
        try:
            z = calibrate(
                lambda noise: _epsilon(config, rate, noise, training.rounds),
                privacy.epsilon,
                low=0.01,
                high=1000.0,
                what="central noise multiplier",
                progress=progress,
            )
        except ValueError as error:
            raise ConfigError("privacy.epsilon", privacy.epsilon, str(error)) from None
    precision = config.secure.precision_bits
    return CentralPlan(
        sampling_rate=rate,
        noise_multiplier=z,
        sensitivity=central_sensitivity(
            clip=privacy.clip, precision_bits=precision, dimension=dimension
        ),
        clients=training.clients,
        precision_bits=precision,
    )


def central_encoder(*, cohort: int, clip: float, precision_bits: int) -> FixedPointEncoder:
    """The clients' encoding: L2 clipping to ``clip``, weight 1, in the smallest standard ring
    (32 or 64 bits) that holds the sum of ``cohort`` clipped updates."""
    needed = FixedPointEncoder.required_ring_bits(cohort, 1, clip, precision_bits)
    return FixedPointEncoder(
        num_clients=cohort,
        max_weight=1,
        clip=clip,
        precision_bits=precision_bits,
        ring_bits=32 if needed <= 32 else 64,
        l2_clip=clip,
    )


def central_noisy_mean(
    updates: Mapping[int, ClientUpdate],
    *,
    plan: CentralPlan,
    clip: float,
    secure: bool = True,
    rounding_random: Callable[[int], RandomSource] | None = None,
    noise_random: RandomSource = system_random,
    dropouts: Mapping[int, secagg.Phase] | None = None,
    **protocol: object,
) -> AggregateOutcome:
    """Central DP mean: the clients clip and encode (weight 1), the sum is taken through secure
    aggregation (or in the clear), and the server adds N_Z(0, (z Delta)^2) to it once, then
    divides by q N and the fixed-point scale.

    Args:
        updates: each client's update (the weights are ignored: every client counts once).
        plan: the calibrated noise.
        clip: C, the L2 bound each client clips its update to.
        secure: sum through the protocol (True) or in the clear.
        rounding_random: ``client id -> random source`` for stochastic rounding.
        noise_random: the server's noise source (``os.urandom``).
        dropouts: the phase in which each dropping client vanishes.
        **protocol: threshold, neighbours, identities, round_index, policy, progress (see
            :func:`secagg.aggregate`), and ``runner``, where the clients encode and run their
            side (:data:`fl.core.aggregation.ProtocolRunner`; default in this process).

    Raises:
        secagg.ThresholdNotMet: too many dropouts; nothing is released.
    """
    started = time.perf_counter()
    encoder = central_encoder(cohort=len(updates), clip=clip, precision_bits=plan.precision_bits)
    encoding = FixedPointEncoding(encoder, rounding_random or system_sources, weight=1)
    dropouts = dict(dropouts or {})
    if secure:
        policy = protocol.get("policy") or secagg.ClientPolicy()
        policy.check_encoding(secagg.Encoding.FIXED_POINT)
        by_phase: dict[secagg.Phase, list[int]] = {}
        for client, phase in dropouts.items():
            by_phase.setdefault(phase, []).append(client)
        runner = protocol.pop("runner", None) or run_in_process
        result = runner(
            updates,
            encoding,
            ring_bits=encoder.ring_bits,
            input_bound=encoder.entry_bound,
            dropouts=by_phase,
            **protocol,
        )
        total, contributors = result.total, result.contributors
        clients = [u for u in result.bytes_sent if u != secagg.messages.SERVER_ID]
        bytes_up = sum(result.bytes_sent[u] for u in clients)
        bytes_down = result.bytes_sent[secagg.messages.SERVER_ID]
    else:
        contributors = frozenset(u for u in updates if contributes_in_the_clear(dropouts.get(u)))
        if not contributors:
            raise secagg.ThresholdNotMet("no client delivered its update")
        encoded = {u: encoding(u, updates[u]).words for u in updates}
        total = np.zeros_like(next(iter(encoded.values())))
        for u in contributors:
            total = (total + encoded[u]) & np.uint64(encoder.ring_mask)
        bytes_up, bytes_down = len(contributors) * 8 * total.size, 0
    noisy = add_central_noise(total, plan=plan, ring_bits=encoder.ring_bits, source=noise_random)
    return AggregateOutcome(
        mean=noisy / (plan.denominator * 2.0**plan.precision_bits),
        contributors=frozenset(contributors),
        total_weight=int(to_signed(np.asarray(total)[:1], encoder.ring_bits)[0]),
        bytes_up=bytes_up,
        bytes_down=bytes_down,
        seconds=time.perf_counter() - started,
        error_bound=math.inf,
    )


def add_central_noise(
    total: np.ndarray, *, plan: CentralPlan, ring_bits: int, source: RandomSource
) -> np.ndarray:
    """The server's step: the unmasked ring sum ``[count, sum q]`` lifted to signed integers,
    and N_Z(0, (z Delta)^2) added to every coordinate of ``sum q``, once (float64 result).

    Raises:
        secagg.ConfigurationError: a noise so large that the noisy sum could leave int64.
    """
    signed = to_signed(np.asarray(total), ring_bits)[1:]
    sigma = plan.noise_std
    if float(np.max(np.abs(signed), initial=0)) + 40 * sigma >= _SAFE:
        raise secagg.ConfigurationError(
            f"central noise of standard deviation {sigma:.3g} does not fit 64-bit integers; "
            "lower secure.precision_bits"
        )
    noise = sample_discrete_gaussian(sigma, signed.size, source)
    return (signed + noise).astype(np.float64)
