"""Differential privacy in the federation: noise calibration before round 1, and what each round
spends, for the ledger.

* Sample level: each client first releases its record count with discrete Gaussian noise
  (:data:`COUNT_NOISE_STD`, accounted once); its DP-SGD sampling rate ``1 / ceil(n~ / batch)``,
  its steps per round and its averaging weight derive from that noisy count ``n~`` only, so
  nothing the server sees depends on the exact count (add/remove of a record changes the noisy
  count's distribution, which is accounted, and nothing else). The noise multiplier is
  calibrated so that, taking part in every round, the client's own epsilon stays within the
  target.
* Client level: clients are Poisson-sampled with rate ``q = cohort / clients`` from a secret
  source and add distributed integer noise (:mod:`dp.distributed`) sized for the fewest honest
  clients in any sum the server can unmask (t - c, :meth:`secagg.ClientPolicy.honest_floor`).
  The server sees who took part, so the noise is calibrated for the headline epsilon against
  the server: ``max_participations`` unamplified rounds per client (a cap the cohort sampling
  enforces), and at most the target against observers too (``rounds`` subsampled rounds).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TextIO

from scipy import stats

import secagg
from dp.accounting import CALIBRATION_STEPS, ProgressCallback, calibrate
from dp.distributed import DistributedNoiseEncoder
from dp.errors import PrivacyWarning
from dp.ledger import ClientLevelEntry, CountEntry, PrivacyLedger, PrivacyLevel, SampleLevelEntry
from dp.samplers import sample_discrete_gaussian
from fl.core.config import RunConfig
from fl.core.data import ClientData
from fl.errors import ConfigError
from secagg.randomness import DeterministicRandom, system_random

__all__ = [
    "COUNT_NOISE_STD",
    "ClientLevelPlan",
    "LineProgress",
    "SampleLevelPlan",
    "client_encoder",
    "client_level_claim",
    "cohort_sizes",
    "participation_cap",
    "plan_client_level",
    "plan_sample_level",
    "release_counts",
    "require_client_delta",
    "secure_session",
    "spent_summary",
]

COUNT_NOISE_STD = 16.0
"""Standard deviation (records) of the discrete Gaussian noise on each client's released record
count at sample level."""

_CAP_FAILURE = 0.01  # probability that the participation cap binds for any client in a run
_COHORT_TAIL = 1e-12  # probability of a cohort size the client-level calibration leaves out


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
    """Per client: the DP-SGD noise multiplier, sampling rate, steps per round and weight, all
    derived from the client's released noisy record count."""

    noise: dict[int, float]
    sampling_rate: dict[int, float]
    steps_per_round: dict[int, int]
    noisy_counts: dict[int, int]

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

    def expected_batch(self, client: int) -> float:
        """q n~: the public batch size DP-SGD averages its noisy gradient sums by."""
        return self.sampling_rate[client] * self.noisy_counts[client]


@dataclass(frozen=True)
class ClientLevelPlan:
    """The client sampling rate, the noise multiplier of the distributed noise, the most rounds
    any client may take part in (None: no cap) and the cohort sizes the calibration covers
    (None: any); a round whose Poisson cohort falls outside them is skipped, unreleased."""

    sampling_rate: float
    noise_multiplier: float
    max_participations: int | None = None
    cohort_sizes: tuple[int, int] | None = None

    def covers(self, cohort: int) -> bool:
        """Whether a round with ``cohort`` clients is within what the noise was calibrated for."""
        return self.cohort_sizes is None or self.cohort_sizes[0] <= cohort <= self.cohort_sizes[1]


@lru_cache(maxsize=4096)
def _session(cohort: int, threshold: int | None, neighbours: int | None) -> secagg.SecAggConfig:
    return secagg.SecAggConfig.create(
        range(1, cohort + 1), 1, threshold=threshold, neighbours=neighbours
    )


def secure_session(config: RunConfig, cohort: int) -> secagg.SecAggConfig:
    """The secure-aggregation parameters a round with ``cohort`` clients runs with."""
    return _session(cohort, config.secure.threshold, config.secure.neighbours)


def spent_summary(ledger: PrivacyLedger) -> dict[str, float]:
    """What a run's summary states about the budget actually spent: the headline epsilon
    (against the server), the epsilon against observers, and the delta they hold at (the
    configured delta plus the samplers' distance)."""
    report = ledger.spent()
    return {
        "epsilon": report.headline,
        "epsilon_against_server": report.server,
        "epsilon_against_observers": report.observer,
        "delta_with_samplers": report.delta,
    }


def release_counts(
    config: RunConfig, data: ClientData, *, ledger: PrivacyLedger | None = None
) -> dict[int, int]:
    """Each client's record count with discrete Gaussian noise of :data:`COUNT_NOISE_STD`
    (exact sampler, clamped to at least 1), recorded in ``ledger`` as a :class:`CountEntry`;
    a ledger that already holds the counts (a resumed run) gives them back unchanged."""
    if ledger is not None and ledger.count_entries:
        counts = ledger.noisy_counts()
        if set(counts) != set(range(1, len(data.client_sizes) + 1)):
            raise ConfigError(
                "training.clients",
                len(data.client_sizes),
                f"the run's ledger holds record counts for clients {sorted(counts)}",
            )
        return counts
    counts = {}
    for client, size in enumerate(data.client_sizes, start=1):
        source = (
            DeterministicRandom(repr(("count", config.seed, client)).encode())
            if config.privacy.reproducible_noise
            else system_random
        )
        noise = int(sample_discrete_gaussian(COUNT_NOISE_STD, 1, source)[0])
        counts[client] = max(1, size + noise)
        if ledger is not None:
            ledger.record_count(CountEntry(client, counts[client], COUNT_NOISE_STD))
    return counts


def plan_sample_level(
    config: RunConfig,
    data: ClientData,
    *,
    ledger: PrivacyLedger | None = None,
    progress: ProgressCallback | None = None,
) -> SampleLevelPlan:
    """Release each client's noisy record count, derive its DP-SGD schedule from it, and
    calibrate its noise multiplier for the target epsilon (or take the given one).

    Clients with the same sampling rate and step count share one calibration.

    Args:
        config: the run configuration.
        data: the federation's data.
        ledger: where the noisy counts are recorded (or found, when resuming).
        progress: ``progress(done, total)`` during calibration; by default a
            :class:`LineProgress` line on standard output every few seconds.

    Raises:
        ConfigError: delta not below 1 / (smallest noisy count), an unreachable target, or a
            max_epsilon below the cost of one round.
    """
    privacy, training = config.privacy, config.training
    counts = release_counts(config, data, ledger=ledger)
    smallest = min(counts.values())
    if privacy.delta >= 1 / smallest:
        raise ConfigError(
            "privacy.delta",
            privacy.delta,
            f"below 1 / {smallest} (the smallest client's released record count is {smallest})",
        )
    rates, steps = {}, {}
    for client, count in counts.items():
        batches = math.ceil(count / min(training.batch_size, count))
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
    plan = SampleLevelPlan(
        noise=noise, sampling_rate=rates, steps_per_round=steps, noisy_counts=counts
    )
    _check_one_round_fits(config, plan)
    return plan


def _sample_epsilon(config: RunConfig, rate: float, sigma: float, steps: int) -> float:
    """One client's sample-level epsilon: its count release and ``steps`` DP-SGD steps."""
    privacy = config.privacy
    ledger = PrivacyLedger(
        level=PrivacyLevel.SAMPLE, delta=privacy.delta, accountant=privacy.accountant
    )
    ledger.record_count(CountEntry(1, 1, COUNT_NOISE_STD))
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
    config: RunConfig,
    plan: ClientLevelPlan,
    *,
    cohort: int,
    dimension: int,
    policy: secagg.ClientPolicy | None = None,
) -> DistributedNoiseEncoder:
    """The distributed-noise encoder of a round with ``cohort`` sampled clients.

    Each client's noise share is sized for t - c honest contributors: t is the round's
    secure-aggregation threshold, c the colluding clients ``policy`` assumes in a neighbourhood
    (they know, and can subtract, their own shares). The encoder records both for the ledger.

    Args:
        config: the run configuration.
        plan: the calibrated noise.
        cohort: the clients in the round.
        dimension: the update length.
        policy: the clients' policy (default: the run configuration's ``[policy]``).

    Raises:
        ConfigError: a threshold that leaves no honest client (t <= c).
    """
    privacy = config.privacy
    policy = policy or config.policy.client_policy()
    session = secure_session(config, cohort)
    corrupt = policy.corrupt_neighbours(session)
    honest = policy.honest_floor(session)
    if honest < 1:
        raise ConfigError(
            "secure.threshold",
            session.threshold,
            f"above the {corrupt} colluding clients the client policy assumes for a cohort of "
            f"{cohort}: raise the threshold or sample more clients per round",
        )
    return DistributedNoiseEncoder(
        mechanism=privacy.mechanism,
        dimension=dimension,
        l2_clip=privacy.clip,
        noise_multiplier=plan.noise_multiplier,
        cohort=cohort,
        noise_shares=honest,
        ring_bits=privacy.ring_bits,
        threshold=session.threshold,
        corrupt=corrupt,
    )


def participation_cap(clients: int, rounds: int, rate: float) -> int:
    """The most rounds a client may take part in: the smallest m with
    ``clients * P[Binomial(rounds, rate) > m] <= 1%``, so the cap rarely binds."""
    if rate >= 1:
        return rounds
    for cap in range(1, rounds + 1):
        if clients * float(stats.binom.sf(cap, rounds, rate)) <= _CAP_FAILURE:
            return cap
    return rounds


def _client_epsilons(
    config: RunConfig, plan: ClientLevelPlan, entry: ClientLevelEntry
) -> tuple[float, float]:
    """(observer, server) epsilon of a whole run: every round subsampled for observers; the
    participation cap's worth of unamplified rounds against the server."""
    privacy, rounds = config.privacy, config.training.rounds
    ledger = PrivacyLedger(
        level=PrivacyLevel.CLIENT, delta=privacy.delta, accountant=privacy.accountant
    )
    cap = plan.max_participations if plan.max_participations is not None else rounds
    for index in range(rounds):
        # client 1 takes part as often as the cap allows, the other rounds go to others
        taking_part = (1,) if index < cap else (index + 2,)
        ledger.record_client(replace(entry, round=index + 1, participants=taking_part))
    report = ledger.spent()
    return report.observer, report.server


def cohort_sizes(config: RunConfig) -> tuple[int, int]:
    """The Poisson cohort sizes a client-level calibration covers: from the smallest round that
    can run (``min_clients``, the threshold) up to the size above which the probability of the
    rest is below 1e-12 per round."""
    training = config.training
    rate = training.cohort_size / training.clients
    low = min(training.clients, max(2, training.min_clients, config.secure.threshold or 0))
    if rate >= 1:
        return training.clients, training.clients
    high = int(stats.binom.isf(_COHORT_TAIL, training.clients, rate)) + 1
    return low, max(low, min(training.clients, high))


def client_level_claim(
    config: RunConfig,
    plan: ClientLevelPlan,
    dimension: int,
    *,
    policy: secagg.ClientPolicy | None = None,
) -> float:
    """The headline epsilon a client-level run with ``plan`` can spend at most: the largest,
    over the cohort sizes the plan covers, of the epsilon against the server (the participation
    cap's worth of unamplified rounds) and against observers (every round, subsampled)."""
    sizes = plan.cohort_sizes or cohort_sizes(config)
    entries = set()  # cohort sizes with the same mechanism spend the same: each counted once
    for cohort in range(sizes[0], sizes[1] + 1):
        encoder = client_encoder(config, plan, cohort=cohort, dimension=dimension, policy=policy)
        entries.add(encoder.ledger_entry(round_index=1, client_sampling_rate=plan.sampling_rate))
    worst = 0.0
    for entry in entries:  # 10,000 clients at q = 0.1: 48 distinct among 1,216 sizes
        worst = max(worst, *_client_epsilons(config, plan, entry))
    return worst


def require_client_delta(config: RunConfig) -> None:
    """At client level a neighbouring data set differs in one client: delta must be below
    1 / clients, or the guarantee allows releasing one client's update outright.

    Raises:
        ConfigError: it is not.
    """
    delta, clients = config.privacy.delta, config.training.clients
    if delta >= 1 / clients:
        raise ConfigError("privacy.delta", delta, f"below 1 / training.clients = {1 / clients:g}")


def plan_client_level(
    config: RunConfig,
    dimension: int,
    *,
    policy: secagg.ClientPolicy | None = None,
    progress: ProgressCallback | None = None,
) -> ClientLevelPlan:
    """Calibrate the distributed noise so that the run's headline epsilon (against the server,
    over the participation cap) and its epsilon against observers (over all rounds, with
    amplification) both meet the target, whatever the size of each round's Poisson cohort
    within :func:`cohort_sizes` (the noise shares and the scale depend on it); warn before
    round 1 when the noise on the averaged update would exceed the clipping bound.

    Raises:
        ConfigError: delta not below 1 / clients, or an unreachable target.
    """
    privacy, training = config.privacy, config.training
    require_client_delta(config)
    rate = training.cohort_size / training.clients
    sizes = cohort_sizes(config)
    if privacy.noise_multiplier is not None:
        plan = ClientLevelPlan(sampling_rate=rate, noise_multiplier=privacy.noise_multiplier)
    else:
        cap = participation_cap(training.clients, training.rounds, rate)

        def epsilon(z: float) -> float:
            trial = ClientLevelPlan(rate, z, cap, sizes)
            return client_level_claim(config, trial, dimension, policy=policy)

        try:
            z = calibrate(
                epsilon,
                privacy.epsilon,
                low=0.01,
                high=1000.0,
                what="distributed noise multiplier",
                progress=progress or LineProgress(),
            )
        except ValueError as error:
            raise ConfigError("privacy.epsilon", privacy.epsilon, str(error)) from None
        plan = ClientLevelPlan(
            sampling_rate=rate, noise_multiplier=z, max_participations=cap, cohort_sizes=sizes
        )
        _warn_if_calibrated_for_small_cohorts(config, plan, dimension, policy)
    _warn_if_noise_dominates(config, plan, dimension)
    return plan


def _warn_if_calibrated_for_small_cohorts(
    config: RunConfig,
    plan: ClientLevelPlan,
    dimension: int,
    policy: secagg.ClientPolicy | None,
) -> None:
    """Warn when the smallest cohort the calibration covers (``training.min_clients``) sets the
    noise and a run of rounds of the expected size would spend less than 3/4 of the target: fewer
    clients certify less of the distributed noise, so every round carries more noise than it
    needs (at 10,000 clients, 1,000 per round, 100 rounds, epsilon 4: noise multiplier 12.1
    calibrated from 3 clients up, 6.8 from 800 up)."""
    low, _ = plan.cohort_sizes
    expected = config.training.cohort_size
    if low >= expected:
        return
    typical = client_level_claim(
        config, replace(plan, cohort_sizes=(expected, expected)), dimension, policy=policy
    )
    target = config.privacy.epsilon
    if typical >= 0.75 * target:
        return
    clients = config.training.clients
    rate = expected / clients
    floor = max(low, math.floor(expected - 6 * math.sqrt(clients * rate * (1 - rate))))
    warnings.warn(
        f"client-level noise is calibrated for rounds of as few as {low} clients "
        f"(training.min_clients), whose members certify less of the distributed noise; rounds of "
        f"the expected {expected} clients would spend only {typical:.3g} of the target epsilon "
        f"{target:g} ({typical / target:.0%}), carrying more noise than they need. Raise "
        f"training.min_clients towards {floor} (a Poisson cohort falls below it with probability "
        "under 1e-9; such a round is skipped) to calibrate for the rounds the run will see.",
        PrivacyWarning,
        stacklevel=3,
    )


def _warn_if_noise_dominates(config: RunConfig, plan: ClientLevelPlan, dimension: int) -> None:
    """Warn when the noise on the mean of a round's updates, z C sqrt(d) / n in L2 norm, is
    larger than the clipping bound C that bounds every update (and so the mean)."""
    cohort = config.training.cohort_size
    z = plan.noise_multiplier
    noise_norm = z * config.privacy.clip * math.sqrt(dimension) / cohort
    if noise_norm <= config.privacy.clip:
        return
    needed = math.floor(z * math.sqrt(dimension)) + 1
    warnings.warn(
        f"client-level DP: the noise on the mean of {cohort} clipped updates has L2 norm about "
        f"{noise_norm:.3g}, {noise_norm / config.privacy.clip:.3g} times the clipping bound "
        f"{config.privacy.clip:g} of any update ({dimension} parameters, noise multiplier "
        f"{z:.3g}): training will mostly follow the noise. About {needed} clients per round "
        "would bring it below the clip (more clients, or a larger epsilon).",
        PrivacyWarning,
        stacklevel=3,
    )
