"""One round of the federation: sample, train, aggregate, apply, evaluate.

Where the clients' work runs: in this process, client after client, or, with a
:class:`~fl.engines.pool.WorkerPool`, in worker processes (training balanced by the clients'
sizes, then encoding and the clients' side of the protocol). The two give the same model bit
for bit: every client's work depends on the seed, the round and the client alone.

Randomness: cohorts, dropouts, minibatch order and stochastic rounding derive from
``(config.seed, round, client)``, so rounds replay exactly. Protocol keys and masks always come
from ``os.urandom``. DP noise comes from ``os.urandom`` as well, unless
``privacy.reproducible_noise`` asks for seeded noise (experiments that must replay bit for bit).
Under client-level DP the cohorts are secret too: each client is included with probability q
by :mod:`secrets` (never derivable from the seed, or the amplification by sampling the ledger
reports for observers would not hold); who took part is recorded in the ledger after the round,
and a resumed run continues from what was recorded.
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

import secagg
from dp.distributed import DistributedNoiseEncoder, Mechanism
from dp.ledger import CentralEntry, ClientLevelEntry, PrivacyLedger, PrivacyLevel, SampleLevelEntry
from dp.removable import RemovableNoise
from fl.algorithms.base import Algorithm, LocalWork, draw_stragglers, make_algorithm
from fl.algorithms.fedavg import FedAvgServer, sample_cohort
from fl.core.aggregation import (
    AggregateOutcome,
    ClientUpdate,
    ProtocolRunner,
    contributes_in_the_clear,
    finite_updates,
    noise_ladder,
    plain_weighted_mean,
    secure_noisy_mean,
    secure_weighted_mean,
)
from fl.core.central import CentralPlan, central_noisy_mean
from fl.core.config import RunConfig
from fl.core.data import ClientData
from fl.core.privacy import ClientLevelPlan, SampleLevelPlan, client_encoder, secure_session
from fl.core.report import RoundMetrics
from fl.core.speeds import task_seconds
from fl.engines.base import Engine
from fl.engines.local import GLOBAL_START, ClientTask, LocalTrainer, TrainedClient, stream_seed
from fl.engines.pool import PooledProtocol, WorkerPool, train_cohort
from secagg.randomness import DeterministicRandom, RandomSource, system_random

__all__ = [
    "Federation",
    "NoiseStreams",
    "RoundProgress",
    "RoundingStreams",
    "TrainedCohort",
    "draw_dropouts",
    "poisson_cohort",
    "stream_seed",
]

_STRAGGLERS = 0x57A6  # the seed stream of each round's stragglers and their partial work

Entry = SampleLevelEntry | ClientLevelEntry | CentralEntry


@dataclass(frozen=True)
class RoundingStreams:
    """Each client's replayable stochastic-rounding stream in one round (picklable, so a
    worker process draws exactly what this process would)."""

    seed: int
    round_index: int

    def __call__(self, client: int) -> RandomSource:
        return DeterministicRandom(f"{self.seed}/{self.round_index}/{client}".encode())


@dataclass(frozen=True)
class NoiseStreams:
    """Each client's DP-noise randomness in one round: :func:`os.urandom`, or a replayable
    stream when the run asks for reproducible noise (picklable, as :class:`RoundingStreams`)."""

    seed: int
    round_index: int
    reproducible: bool

    def __call__(self, client: int) -> RandomSource:
        if self.reproducible:
            return DeterministicRandom(
                repr(("noise", self.seed, self.round_index, client)).encode()
            )
        return system_random


@dataclass(frozen=True)
class RoundProgress:
    """Where a round is: local training (``phase`` None) or a protocol phase, ``done`` of
    ``total`` steps (clients)."""

    round: int
    phase: secagg.Phase | None
    done: int
    total: int


def poisson_cohort(clients: list[int], rate: float) -> list[int]:
    """Each client independently with probability ``rate``, exactly (the float ``rate`` is a
    dyadic rational m / 2^e: include when a uniform integer below 2^e is below m), from
    :func:`secrets.randbelow`."""
    numerator, denominator = float(rate).as_integer_ratio()
    return [u for u in clients if secrets.randbelow(denominator) < numerator]


def draw_dropouts(
    cohort: list[int], probability: float, *, identities: bool, generator: np.random.Generator
) -> dict[int, secagg.Phase]:
    """Each client drops out with ``probability``, in a protocol phase chosen uniformly."""
    phases = [p for p in secagg.Phase if identities or p is not secagg.Phase.CONSISTENCY_CHECK]
    dropouts = {}
    for client in cohort:
        if generator.random() < probability:
            dropouts[client] = phases[int(generator.integers(len(phases)))]
    return dropouts


@dataclass(frozen=True, eq=False)
class TrainedCohort:
    """What the training step of a round produced.

    Attributes:
        updates: the finite updates, by client.
        dropouts: the injected dropouts of the clients in ``updates``.
        non_finite: the clients whose update was not finite (left out).
        seconds: the training time, summed over clients.
        stragglers: the round's stragglers (dropped by FedAvg, partial work under FedProx).
        simulated_seconds: how long the round took on the simulated clock (its slowest
            client that trained).
    """

    updates: dict[int, ClientUpdate]
    dropouts: dict[int, secagg.Phase]
    non_finite: tuple[int, ...]
    seconds: float
    stragglers: tuple[int, ...] = ()
    simulated_seconds: float = 0.0


@dataclass
class Federation(Engine[TrainedCohort]):
    """The in-process engine's state from round to round, and its four steps."""

    config: RunConfig
    server: FedAvgServer
    working: nn.Module
    data: ClientData
    device: torch.device
    ledger: PrivacyLedger | None = None
    sample_plan: SampleLevelPlan | None = None
    client_plan: ClientLevelPlan | None = None
    central_plan: CentralPlan | None = None
    algorithm: Algorithm | None = None
    clock: float = 0.0
    pool: WorkerPool | None = None
    progress: Callable[[RoundProgress], None] | None = None
    _pending: list[Entry] = field(default_factory=list)
    _drawn: tuple[int, list[int]] | None = None
    _dropouts: dict[int, secagg.Phase] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.algorithm is None:
            self.algorithm = make_algorithm(self.config.algorithm)
        self._warn_without_exact_noise()

    @property
    def level(self) -> PrivacyLevel:
        return self.config.privacy.level

    @property
    def policy(self) -> secagg.ClientPolicy:
        """The floors every client holds (the run configuration's ``[policy]``)."""
        return self.config.policy.client_policy()

    @property
    def trainer(self) -> LocalTrainer:
        """What every client needs to train (shipped to each worker of a pool)."""
        return LocalTrainer(
            self.config,
            self.working,
            self.device,
            self.sample_plan,
            proximal_mu=self.algorithm.proximal_mu,
        )

    @property
    def _runner(self) -> ProtocolRunner | None:
        """Where the clients run their side of the protocol (None: in this process)."""
        return None if self.pool is None else PooledProtocol(self.pool)

    def _generator(self, round_index: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, round_index])

    def cohort(self, round_index: int) -> list[int]:
        """The clients of round ``round_index`` (0-based): drawn once per round and kept until
        the round runs, so a budget check and the round see the same cohort.

        Client level: Poisson sampling at the plan's rate from :mod:`secrets`, among the clients
        that have not reached the plan's participation cap. Central level: Poisson sampling at
        the plan's rate. Otherwise: a uniform sample of the cohort size from the run's seed.
        """
        if self._drawn is not None and self._drawn[0] == round_index:
            return self._drawn[1]
        training = self.config.training
        if self.level is PrivacyLevel.CENTRAL:  # secret Poisson sampling: amplification
            cohort = poisson_cohort(
                list(range(1, training.clients + 1)), self.central_plan.sampling_rate
            )
        elif self.level is PrivacyLevel.CLIENT:  # Poisson sampling, which the accounting assumes
            eligible = list(range(1, training.clients + 1))
            cap = self.client_plan.max_participations
            if cap is not None and self.ledger is not None:
                taken = self.ledger.participations()
                eligible = [u for u in eligible if sum(taken.get(u, {}).values()) < cap]
            cohort = poisson_cohort(eligible, self.client_plan.sampling_rate)
        else:
            cohort = sample_cohort(
                training.clients, training.cohort_size, self._generator(round_index)
            )
        self._drawn = (round_index, cohort)
        return cohort

    def _warn_without_exact_noise(self) -> None:
        privacy, secure = self.config.privacy, self.config.secure
        if self.level is PrivacyLevel.CLIENT and privacy.exact_noise and not self.exact_noise:
            why = (
                "secure.identities = true (--identities)"
                if not secure.identities
                else "privacy.mechanism = 'skellam'"
            )
            warnings.warn(
                f"exact noise under dropouts needs {why}: each client adds the worst case's "
                "share V / (t - c), so a round whose n clients all survive carries n / (t - c) "
                "times the variance its privacy needs (set privacy.exact_noise = false to "
                "silence this)",
                stacklevel=2,
            )

    @property
    def exact_noise(self) -> bool:
        """Whether clients remove the noise their certified survivors make unnecessary."""
        privacy = self.config.privacy
        return (
            self.level is PrivacyLevel.CLIENT
            and privacy.exact_noise
            and self.config.secure.identities
            and privacy.mechanism is Mechanism.SKELLAM
        )

    def _ladder(self, encoder: DistributedNoiseEncoder, cohort: int) -> RemovableNoise | None:
        if not self.exact_noise:
            return None
        return noise_ladder(encoder, secure_session(self.config, cohort), self.policy)

    def _client_encoder(self, cohort: int) -> DistributedNoiseEncoder:
        return client_encoder(
            self.config,
            self.client_plan,
            cohort=cohort,
            dimension=self.dimension,
            policy=self.policy,
        )

    def prospective(self, round_index: int) -> tuple[Entry, ...]:
        """What round ``round_index`` would add to the ledger if its actual cohort took part
        in full (the cohort is drawn now and kept for the round)."""
        cohort = self.cohort(round_index)
        if not self._runnable(cohort):
            return ()
        if self.level is PrivacyLevel.SAMPLE:
            clip = self.config.privacy.clip
            return tuple(self.sample_plan.entry(round_index, c, clip) for c in cohort)
        if self.level is PrivacyLevel.CENTRAL:
            return (self.central_plan.entry(round_index, tuple(cohort)),)
        if self.level is PrivacyLevel.CLIENT:
            encoder = self._client_encoder(len(cohort))
            return (
                encoder.ledger_entry(
                    round_index=round_index + 1,
                    client_sampling_rate=self.client_plan.sampling_rate,
                    participants=tuple(cohort),
                    ladder=self._ladder(encoder, len(cohort)),
                ),
            )
        return ()

    def _runnable(self, cohort: list[int]) -> bool:
        """Whether a round with this cohort runs: enough clients, and (client level) a size the
        noise was calibrated for."""
        if self.level is PrivacyLevel.CLIENT and not self.client_plan.covers(len(cohort)):
            return False
        return len(cohort) >= self._needed

    @property
    def _needed(self) -> int:
        """The fewest clients a round runs with: the server's minimum, the threshold, and (secure)
        the cohort floor of the clients' policy."""
        secure = self.config.secure
        return max(
            self.config.training.min_clients,
            secure.threshold or 0,
            self.config.policy.min_clients if secure.enabled else 0,
        )

    @property
    def dimension(self) -> int:
        return int(self.server.global_vector.numel())

    def _tasks(self, work: Mapping[int, LocalWork]) -> list[ClientTask]:
        """The training tasks of the clients in ``work`` (in its order), from the global model;
        each client's examples are read (or generated) now, for this round only."""
        return [ClientTask(u, *self.data.client_arrays(u), work=w) for u, w in work.items()]

    def _train_all(
        self,
        round_index: int,
        tasks: Sequence[ClientTask],
        starts: Mapping[int, torch.Tensor] | None = None,
    ) -> dict[int, TrainedClient]:
        """Every task's client does its local work from its start vector (``starts[task.start]``;
        default: the global model): in the pool when there is one, else here, client after
        client; progress is reported per client.

        Raises:
            ValueError: sample-level DP with partial work or another start than the global
                model (the configuration refuses both before round 1).
        """
        starts = {GLOBAL_START: self.server.global_vector} if starts is None else starts
        if self.level is PrivacyLevel.SAMPLE:
            epochs = self.config.training.local_epochs
            if any(t.work.partial or t.work.epochs != epochs for t in tasks) or any(
                t.start != GLOBAL_START for t in tasks
            ):
                raise ValueError(
                    "sample-level DP trains every client for training.local_epochs from the "
                    "current model (the privacy plan's steps)"
                )
        done = 0

        def trained_one(_client: int) -> None:
            nonlocal done
            done += 1
            self._report(round_index, None, done, len(tasks))

        self._report(round_index, None, 0, len(tasks))
        if self.pool is not None:
            return train_cohort(self.pool, round_index, starts, tasks, on_trained=trained_one)
        trainer, results = self.trainer, {}
        for task in tasks:
            results[task.client] = trainer.train(round_index, task, starts[task.start])
            trained_one(task.client)
        return results

    def _report(self, round_index: int, phase: secagg.Phase | None, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(RoundProgress(round_index + 1, phase, done, total))

    def _protocol_progress(self, round_index: int) -> secagg.ProgressCallback | None:
        if self.progress is None:
            return None
        return lambda phase, done, total: self._report(round_index, phase, done, total)

    def _aggregate(
        self, updates: dict[int, ClientUpdate], dropouts: dict, round_index: int
    ) -> AggregateOutcome:
        config, secure = self.config, self.config.secure
        if not secure.enabled:
            if self.level is PrivacyLevel.CENTRAL:
                return self._central(updates, dropouts, round_index, None)
            return plain_weighted_mean(updates, dropouts=dropouts)
        protocol = dict(
            threshold=secure.threshold,
            neighbours=secure.neighbours,
            identities=secure.identities,
            dropouts=dropouts,
            round_index=round_index,
            policy=self.policy,
            progress=self._protocol_progress(round_index),
            runner=self._runner,
        )
        if self.level is PrivacyLevel.CENTRAL:
            return self._central(updates, dropouts, round_index, protocol)
        if self.level is PrivacyLevel.CLIENT:
            encoder = self._client_encoder(len(updates))
            rotation_seed = DeterministicRandom(
                repr(("rotation", config.seed, round_index)).encode()
            )(32)
            outcome = secure_noisy_mean(
                updates,
                encoder=encoder,
                rotation_seed=rotation_seed,
                noise_random=NoiseStreams(
                    config.seed, round_index, config.privacy.reproducible_noise
                ),
                exact_noise=self.exact_noise,
                **protocol,
            )
            self._pending.append(
                encoder.ledger_entry(
                    round_index=round_index + 1,
                    client_sampling_rate=self.client_plan.sampling_rate,
                    participants=tuple(outcome.contributors),
                    variance_left=outcome.noise_variance_left,
                    ladder=outcome.noise_ladder,
                )
            )
            return outcome
        return secure_weighted_mean(
            updates,
            max_weight=secure.max_weight,
            clip=secure.clip,
            precision_bits=secure.precision_bits,
            ring_bits=secure.ring_bits,
            rounding_random=RoundingStreams(config.seed, round_index),
            **protocol,
        )

    def _central(
        self,
        updates: dict[int, ClientUpdate],
        dropouts: dict,
        round_index: int,
        protocol: dict | None,
    ) -> AggregateOutcome:
        """Central DP: client-side clipping, the server's noise on the unmasked sum."""
        config = self.config
        outcome = central_noisy_mean(
            updates,
            plan=self.central_plan,
            clip=config.privacy.clip,
            secure=protocol is not None,
            rounding_random=RoundingStreams(config.seed, round_index),
            noise_random=NoiseStreams(config.seed, round_index, config.privacy.reproducible_noise)(
                0
            ),
            **(protocol or {"dropouts": dropouts}),
        )
        self._pending.append(
            self.central_plan.entry(round_index, tuple(sorted(outcome.contributors)))
        )
        return outcome

    def plan_work(self, round_index: int, cohort: Sequence[int]) -> dict[int, LocalWork]:
        """The algorithm's local work for each client; the round's stragglers (a fraction of the
        cohort, drawn from the seed) are dropped (FedAvg) or do partial work (FedProx)."""
        generator = np.random.default_rng([self.config.seed, round_index, _STRAGGLERS])
        stragglers = draw_stragglers(cohort, self.config.algorithm.stragglers, generator)
        return self.algorithm.plan_work(
            cohort,
            epochs=self.config.training.local_epochs,
            stragglers=stragglers,
            generator=generator,
        )

    def task_seconds(self, client: int, epochs: int) -> float:
        """Simulated seconds ``client`` takes for ``epochs`` epochs (:mod:`fl.core.speeds`)."""
        schedule = self.config.schedule
        return task_seconds(
            client,
            examples=self.data.client_sizes[client - 1],
            epochs=epochs,
            batch_size=self.config.training.batch_size,
            seed=self.config.seed,
            sigma=schedule.speed_sigma,
            median=schedule.step_seconds,
        )

    # -- the engine's four steps (fl.engines.base.Engine) ----------------------------------------

    def sample_cohort(self, round_index: int) -> list[int]:
        """The round's cohort, and the dropouts the simulation injects into it."""
        generator = self._generator(round_index)
        cohort = self.cohort(round_index)
        if self.level is not PrivacyLevel.CLIENT:
            # the seeded cohort came from this round's generator: step past that draw, so the
            # dropouts that follow are the ones the seed has always given
            sample_cohort(self.config.training.clients, len(cohort), generator)
        self._drawn = None
        self._dropouts = draw_dropouts(
            cohort,
            self.config.secure.dropout,
            identities=self.config.secure.identities,
            generator=generator,
        )
        self._pending = []
        return cohort

    def ready(self, round_index: int, cohort: Sequence[int]) -> bool:
        return self._runnable(list(cohort))

    def train(self, round_index: int, cohort: Sequence[int]) -> TrainedCohort:
        """Local training of every client the algorithm keeps, for the work it plans; non-finite
        updates are left out. The round lasts, on the simulated clock, as long as its slowest
        client that trained."""
        work = self.plan_work(round_index, cohort)
        work = {u: work[u] for u in cohort if u in work}
        trained = self._train_all(round_index, self._tasks(work))
        updates = {u: trained[u].update for u in work}
        seconds = sum(trained[u].seconds for u in work)
        slowest = max((self.task_seconds(u, w.epochs) for u, w in work.items()), default=0.0)
        self.clock += slowest
        if self.level is PrivacyLevel.SAMPLE:
            clip = self.config.privacy.clip
            self._pending.extend(self.sample_plan.entry(round_index, u, clip) for u in work)
        stragglers = tuple(u for u in cohort if u not in work or work[u].partial)
        updates, non_finite = finite_updates(updates)
        dropouts = {u: phase for u, phase in self._dropouts.items() if u in updates}
        return TrainedCohort(updates, dropouts, non_finite, seconds, stragglers, slowest)

    def secure_sum(self, round_index: int, trained: TrainedCohort) -> AggregateOutcome:
        if len(trained.updates) < self._needed:
            raise secagg.ThresholdNotMet(
                f"round {round_index + 1}: only {len(trained.updates)} finite updates, "
                f"{self._needed} needed"
            )
        return self._aggregate(trained.updates, trained.dropouts, round_index)

    def apply(self, round_index: int, outcome: AggregateOutcome) -> None:
        self.server.apply(outcome.mean)

    def run_round(self, round_index: int) -> RoundMetrics:
        """One round (``round_index`` is 0-based); the ledger is charged only if a sum is released."""
        record = self.step(round_index)
        cohort, trained = list(record.cohort), record.trained
        if trained is None:
            return self._failed(round_index, cohort, 0.0, dropped=0, traffic=(0, 0))
        if not record.released:
            reached_the_protocol = len(trained.updates) >= self._needed
            vanished = sum(
                not contributes_in_the_clear(phase) for phase in trained.dropouts.values()
            )
            cut_off = [u for u in trained.stragglers if u not in trained.updates]
            cut_off = [u for u in cut_off if u not in trained.non_finite]
            return self._failed(
                round_index,
                cohort,
                trained.seconds,
                dropped=len(trained.non_finite)
                + len(cut_off)
                + (vanished if reached_the_protocol else 0),
                traffic=self._traffic(record.failure) if reached_the_protocol else (0, 0),
                non_finite=trained.non_finite,
                stragglers=len(trained.stragglers),
            )
        return self._metrics(
            round_index,
            cohort,
            trained.seconds,
            record.outcome,
            epsilon=self._charge(),
            non_finite=trained.non_finite,
            stragglers=len(trained.stragglers),
        )

    def _traffic(self, failure: Exception | None) -> tuple[int | None, int | None]:
        """The bytes a failed round moved: measured by the protocol, none in the clear."""
        if not self.config.secure.enabled:
            return 0, 0
        return getattr(failure, "bytes_up", None), getattr(failure, "bytes_down", None)

    def _charge(self) -> float | None:
        if self.ledger is None:
            return None
        for entry in self._pending:
            if isinstance(entry, SampleLevelEntry):
                self.ledger.record_sample(entry)
            elif isinstance(entry, CentralEntry):
                self.ledger.record_central(entry)
            else:
                self.ledger.record_client(entry)
        self._pending = []
        return self.ledger.close_round()

    def _failed(
        self,
        round_index: int,
        cohort: list[int],
        train_seconds: float,
        *,
        dropped: int,
        traffic: tuple[int | None, int | None],
        non_finite: tuple[int, ...] = (),
        stragglers: int = 0,
    ) -> RoundMetrics:
        """Nothing was released: the model is unchanged and no privacy is spent. ``dropped``
        counts the clients that really dropped out; ``traffic`` is (bytes up, bytes down), None
        where not measured."""
        self._pending = []
        epsilon = self.ledger.repeat_last() if self.ledger is not None else None
        accuracy, loss = self.server.evaluate(self.data.test_x, self.data.test_y)
        return RoundMetrics(
            round=round_index + 1,
            accuracy=accuracy,
            loss=loss,
            sampled=len(cohort),
            dropped=dropped,
            bytes_up=traffic[0],
            bytes_down=traffic[1],
            secagg_seconds=0.0,
            train_seconds=train_seconds,
            failed=True,
            epsilon=epsilon,
            non_finite=non_finite,
            stragglers=stragglers,
            simulated_time=round(self.clock, 6),
        )

    def _metrics(
        self,
        round_index: int,
        cohort: list[int],
        train_seconds: float,
        outcome: AggregateOutcome,
        *,
        epsilon: float | None,
        non_finite: tuple[int, ...],
        stragglers: int = 0,
    ) -> RoundMetrics:
        """Evaluate the global model and describe a round whose mean was applied."""
        accuracy, loss = self.server.evaluate(self.data.test_x, self.data.test_y)
        return RoundMetrics(
            round=round_index + 1,
            accuracy=accuracy,
            loss=loss,
            sampled=len(cohort),
            dropped=len(cohort) - len(outcome.contributors),
            bytes_up=outcome.bytes_up,
            bytes_down=outcome.bytes_down,
            secagg_seconds=outcome.seconds,
            train_seconds=train_seconds,
            epsilon=epsilon,
            non_finite=non_finite,
            stragglers=stragglers,
            simulated_time=round(self.clock, 6),
        )
