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
import sys
import time
from dataclasses import dataclass
from typing import TextIO

import secagg
from dp.accounting import CALIBRATION_STEPS, ProgressCallback, calibrate
from dp.distributed import DistributedNoiseEncoder
from dp.ledger import PrivacyLedger, PrivacyLevel, SampleLevelEntry
from fl.config import RunConfig
from fl.data import FederatedData
from fl.errors import ConfigError

__all__ = [
    "ClientLevelPlan",
    "LineProgress",
    "SampleLevelPlan",
    "client_encoder",
    "plan_client_level",
    "plan_sample_level",
]


class LineProgress:
    """A progress callback that prints a plain line (``calibrating noise: step i/n``) at most every
    ``every`` seconds, so that output that is not a terminal (a log file, a pipe, CI) still shows
    that calibration is working. Short calibrations print nothing.

    Args:
        stream: where the lines go (standard output by default).
        every: seconds between lines; the first line comes after this long.
        label: what is in progress.
    """

    def __init__(
        self, stream: TextIO | None = None, *, every: float = 5.0, label: str = "calibrating noise"
    ) -> None:
        self.stream = stream
        self.every = every
        self.label = label
        self._last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            print(f"{self.label}: step {done}/{total}", file=self.stream or sys.stdout, flush=True)


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
    """The secure-aggregation threshold for a cohort: the fewest inputs a released sum holds."""
    return secagg.SecAggConfig.create(
        range(1, cohort + 1),
        1,
        threshold=config.secure.threshold,
        neighbours=config.secure.neighbours,
    ).threshold


def plan_sample_level(
    config: RunConfig, data: FederatedData, *, progress: ProgressCallback | None = None
) -> SampleLevelPlan:
    """Calibrate each client's DP-SGD noise for the target epsilon (or take the given one).

    Clients with the same sampling rate and step count share one calibration.

    Args:
        config: the run configuration.
        data: the federation's data (each client's example count fixes its sampling rate).
        progress: ``progress(done, total)`` during calibration; by default a
            :class:`LineProgress` line on standard output every few seconds.

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
    rates, steps = {}, {}
    for client, indices in enumerate(data.client_indices, start=1):
        batches = math.ceil(len(indices) / min(training.batch_size, len(indices)))
        rates[client] = 1 / batches
        steps[client] = training.local_epochs * batches
    if privacy.noise_multiplier is not None:
        noise = dict.fromkeys(rates, privacy.noise_multiplier)
    else:
        report = progress or LineProgress()
        settings = sorted({(rates[c], steps[c] * training.rounds) for c in rates})
        total = len(settings) * CALIBRATION_STEPS
        calibrated = {}
        for index, (rate, total_steps) in enumerate(settings):
            offset = index * CALIBRATION_STEPS
            calibrated[rate, total_steps] = _calibrate_sample(
                config,
                rate,
                total_steps,
                progress=lambda done, _, offset=offset: report(offset + done, total),
            )
        noise = {c: calibrated[rates[c], steps[c] * training.rounds] for c in rates}
    plan = SampleLevelPlan(noise=noise, sampling_rate=rates, steps_per_round=steps)
    _check_one_round_fits(config, plan)
    return plan


def _sample_epsilon(config: RunConfig, rate: float, sigma: float, steps: int) -> float:
    """One client's sample-level epsilon after ``steps`` DP-SGD steps."""
    privacy = config.privacy
    ledger = PrivacyLedger(
        level=PrivacyLevel.SAMPLE, delta=privacy.delta, accountant=privacy.accountant
    )
    ledger.record_sample(SampleLevelEntry(1, 1, rate, sigma, steps, privacy.clip))
    return ledger.client_epsilon(1)


def _check_one_round_fits(config: RunConfig, plan: SampleLevelPlan) -> None:
    """Refuse a ``max_epsilon`` that not even one round fits in (the run would stop before round
    1), naming the round's epsilon, the client it comes from and the noise that would fit.

    Raises:
        ConfigError: naming privacy.max_epsilon.
    """
    budget = config.privacy.max_epsilon
    if budget is None:
        return
    costs = {
        client: _sample_epsilon(
            config, plan.sampling_rate[client], plan.noise[client], plan.steps_per_round[client]
        )
        for client in plan.noise
    }
    worst = max(costs, key=costs.__getitem__)
    if costs[worst] <= budget:
        return
    rate, steps = plan.sampling_rate[worst], plan.steps_per_round[worst]
    try:
        fitting = calibrate(
            lambda sigma: _sample_epsilon(config, rate, sigma, steps),
            budget,
            what="DP-SGD noise multiplier",
        )
        fix = f"; or a noise multiplier of at least {fitting:.3g}"
    except ValueError:
        fix = ""
    raise ConfigError(
        "privacy.max_epsilon",
        budget,
        f"at least {costs[worst]:.3f}: a single round spends that much for client {worst} "
        f"({steps} DP-SGD steps at sampling rate {rate:.3g}, noise multiplier "
        f"{plan.noise[worst]:.3g}), so the run would stop before round 1{fix}",
    )


def _calibrate_sample(
    config: RunConfig, rate: float, total_steps: int, *, progress: ProgressCallback
) -> float:
    privacy = config.privacy
    try:
        return calibrate(
            lambda sigma: _sample_epsilon(config, rate, sigma, total_steps),
            privacy.epsilon,
            what="DP-SGD noise multiplier",
            progress=progress,
        )
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
