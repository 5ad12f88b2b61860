"""Differential privacy in the federation: noise calibration before round 1, and what each round
spends, for the ledger.

* Sample level: every client runs DP-SGD (Opacus) with a noise multiplier calibrated so that,
  taking part in every round, its own epsilon stays within the target: ``rounds x local_epochs x
  ceil(n_k / batch)`` Poisson-sampled Gaussian steps at rate ``1 / ceil(n_k / batch)``.
* Client level: clients are Poisson-sampled with rate ``q = cohort / clients`` and add
  distributed integer noise (:mod:`dp.distributed`) calibrated so that ``rounds`` sampled rounds
  stay within the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import secagg
from dp.accounting import calibrate
from dp.distributed import DistributedNoiseEncoder
from dp.ledger import PrivacyLedger, PrivacyLevel, SampleLevelEntry
from fl.config import RunConfig
from fl.data import FederatedData
from fl.errors import ConfigError

__all__ = [
    "ClientLevelPlan",
    "SampleLevelPlan",
    "client_encoder",
    "plan_client_level",
    "plan_sample_level",
]


@dataclass(frozen=True)
class SampleLevelPlan:
    """Per client: the DP-SGD noise multiplier, sampling rate and steps per round."""

    noise: dict[int, float]
    sampling_rate: dict[int, float]
    steps_per_round: dict[int, int]

    def entry(self, round_index: int, client: int, clip: float) -> SampleLevelEntry:
        """The ledger entry of one client's training in one round."""
        return SampleLevelEntry(
            round=round_index + 1,
            client=client,
            sampling_rate=self.sampling_rate[client],
            noise_multiplier=self.noise[client],
            steps=self.steps_per_round[client],
            max_grad_norm=clip,
        )


@dataclass(frozen=True)
class ClientLevelPlan:
    """The client sampling rate and the noise multiplier of the distributed noise."""

    sampling_rate: float
    noise_multiplier: float


def _noise_shares(config: RunConfig, cohort: int) -> int:
    """t - c: the fewest honest inputs in a sum the server can unmask (the clients' policy
    assumes up to c colluders in a neighbourhood, who can subtract their own noise)."""
    shape = secagg.SecAggConfig.create(
        range(1, cohort + 1),
        1,
        threshold=config.secure.threshold,
        neighbours=config.secure.neighbours,
    )
    return config.policy.client_policy().honest_floor(shape)


def plan_sample_level(config: RunConfig, data: FederatedData) -> SampleLevelPlan:
    """Calibrate each client's DP-SGD noise for the target epsilon (or take the given one).

    Raises:
        ConfigError: delta not below 1 / (smallest client data set), or an unreachable target.
    """
    privacy, training = config.privacy, config.training
    smallest = min(len(i) for i in data.client_indices)
    if privacy.delta >= 1 / smallest:
        raise ConfigError(
            "privacy.delta",
            privacy.delta,
            f"below 1 / {smallest} (the smallest client holds {smallest} examples)",
        )
    noise, rates, steps = {}, {}, {}
    for client, indices in enumerate(data.client_indices, start=1):
        batches = math.ceil(len(indices) / min(training.batch_size, len(indices)))
        rates[client] = 1 / batches
        steps[client] = training.local_epochs * batches
        noise[client] = privacy.noise_multiplier or _calibrate_sample(
            config, rates[client], steps[client] * training.rounds
        )
    return SampleLevelPlan(noise=noise, sampling_rate=rates, steps_per_round=steps)


def _calibrate_sample(config: RunConfig, rate: float, total_steps: int) -> float:
    privacy = config.privacy

    def epsilon(sigma: float) -> float:
        ledger = PrivacyLedger(
            level=PrivacyLevel.SAMPLE, delta=privacy.delta, accountant=privacy.accountant
        )
        ledger.record_sample(SampleLevelEntry(1, 1, rate, sigma, total_steps, privacy.clip))
        return ledger.client_epsilon(1)

    try:
        return calibrate(epsilon, privacy.epsilon, what="DP-SGD noise multiplier")
    except ValueError as error:
        raise ConfigError("privacy.epsilon", privacy.epsilon, str(error)) from None


def client_encoder(
    config: RunConfig, plan: ClientLevelPlan, *, cohort: int, dimension: int
) -> DistributedNoiseEncoder:
    """The distributed-noise encoder of a round with ``cohort`` sampled clients."""
    privacy = config.privacy
    return DistributedNoiseEncoder(
        mechanism=privacy.mechanism,
        dimension=dimension,
        l2_clip=privacy.clip,
        noise_multiplier=plan.noise_multiplier,
        cohort=cohort,
        noise_shares=_noise_shares(config, cohort),
        ring_bits=privacy.ring_bits,
    )


def plan_client_level(config: RunConfig, dimension: int) -> ClientLevelPlan:
    """Calibrate the distributed noise for the target epsilon over all rounds.

    Raises:
        ConfigError: delta not below 1 / clients, or an unreachable target.
    """
    privacy, training = config.privacy, config.training
    if privacy.delta >= 1 / training.clients:
        raise ConfigError(
            "privacy.delta", privacy.delta, f"below 1 / training.clients = {1 / training.clients:g}"
        )
    rate = training.cohort_size / training.clients
    if privacy.noise_multiplier is not None:
        return ClientLevelPlan(sampling_rate=rate, noise_multiplier=privacy.noise_multiplier)
    cohort = training.cohort_size

    def epsilon(z: float) -> float:
        encoder = client_encoder(
            config, ClientLevelPlan(rate, z), cohort=cohort, dimension=dimension
        )
        ledger = PrivacyLedger(
            level=PrivacyLevel.CLIENT, delta=privacy.delta, accountant=privacy.accountant
        )
        entry = encoder.ledger_entry(round_index=1, client_sampling_rate=rate)
        for _ in range(training.rounds):
            ledger.record_client(entry)
        return ledger.epsilon()

    try:
        z = calibrate(
            epsilon, privacy.epsilon, low=0.01, high=1000.0, what="distributed noise multiplier"
        )
    except ValueError as error:
        raise ConfigError("privacy.epsilon", privacy.epsilon, str(error)) from None
    return ClientLevelPlan(sampling_rate=rate, noise_multiplier=z)
