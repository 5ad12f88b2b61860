"""One round of the federation: sample, train, aggregate, apply, evaluate.

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

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

import secagg
from dp.distributed import DistributedNoiseEncoder
from dp.ledger import ClientLevelEntry, PrivacyLedger, PrivacyLevel, SampleLevelEntry
from fl.algorithms.fedavg import FedAvgServer, sample_cohort
from fl.core.aggregation import (
    AggregateOutcome,
    ClientUpdate,
    contributes_in_the_clear,
    finite_updates,
    plain_weighted_mean,
    secure_noisy_mean,
    secure_weighted_mean,
)
from fl.core.config import RunConfig
from fl.core.data import FederatedData
from fl.core.privacy import ClientLevelPlan, SampleLevelPlan, client_encoder
from fl.core.report import RoundMetrics
from fl.core.training import train_locally
from fl.engines.base import Engine
from secagg.randomness import DeterministicRandom, RandomSource, system_random

__all__ = ["Federation", "TrainedCohort", "draw_dropouts", "poisson_cohort", "stream_seed"]


def stream_seed(*key: int) -> int:
    """A 63-bit seed for one (seed, round, client) stream."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> np.uint64(1))


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
    """

    updates: dict[int, ClientUpdate]
    dropouts: dict[int, secagg.Phase]
    non_finite: tuple[int, ...]
    seconds: float


@dataclass
class Federation(Engine[TrainedCohort]):
    """The in-process engine's state from round to round, and its four steps."""

    config: RunConfig
    server: FedAvgServer
    working: nn.Module
    data: FederatedData
    device: torch.device
    ledger: PrivacyLedger | None = None
    sample_plan: SampleLevelPlan | None = None
    client_plan: ClientLevelPlan | None = None
    _pending: list[SampleLevelEntry | ClientLevelEntry] = field(default_factory=list)
    _drawn: tuple[int, list[int]] | None = None
    _dropouts: dict[int, secagg.Phase] = field(default_factory=dict)

    @property
    def level(self) -> PrivacyLevel:
        return self.config.privacy.level

    @property
    def policy(self) -> secagg.ClientPolicy:
        """The floors every client holds (the run configuration's ``[policy]``)."""
        return self.config.policy.client_policy()

    def _noise_source(self, *key: int) -> RandomSource:
        if self.config.privacy.reproducible_noise:
            return DeterministicRandom(repr(("noise", self.config.seed, *key)).encode())
        return system_random

    def _generator(self, round_index: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, round_index])

    def cohort(self, round_index: int) -> list[int]:
        """The clients of round ``round_index`` (0-based): drawn once per round and kept until
        the round runs, so a budget check and the round see the same cohort.

        Client level: Poisson sampling at the plan's rate from :mod:`secrets`, among the clients
        that have not reached the plan's participation cap. Otherwise: a uniform sample of the
        cohort size from the run's seed.
        """
        if self._drawn is not None and self._drawn[0] == round_index:
            return self._drawn[1]
        training = self.config.training
        if self.level is PrivacyLevel.CLIENT:  # Poisson sampling, which the accounting assumes
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

    def _client_encoder(self, cohort: int) -> DistributedNoiseEncoder:
        return client_encoder(
            self.config,
            self.client_plan,
            cohort=cohort,
            dimension=self.dimension,
            policy=self.policy,
        )

    def prospective(self, round_index: int) -> tuple[SampleLevelEntry | ClientLevelEntry, ...]:
        """What round ``round_index`` would add to the ledger if its actual cohort took part
        in full (the cohort is drawn now and kept for the round)."""
        cohort = self.cohort(round_index)
        if not self._runnable(cohort):
            return ()
        if self.level is PrivacyLevel.SAMPLE:
            clip = self.config.privacy.clip
            return tuple(self.sample_plan.entry(round_index, c, clip) for c in cohort)
        if self.level is PrivacyLevel.CLIENT:
            return (
                self._client_encoder(len(cohort)).ledger_entry(
                    round_index=round_index + 1,
                    client_sampling_rate=self.client_plan.sampling_rate,
                    participants=tuple(cohort),
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

    def _train(self, round_index: int, client: int) -> tuple[ClientUpdate, float]:
        x, y = self.data.client_arrays(client)
        seed = stream_seed(self.config.seed, round_index, client)
        training = self.config.training
        if self.level is not PrivacyLevel.SAMPLE:
            local = train_locally(
                self.working,
                self.server.global_vector,
                x,
                y,
                training=training,
                device=self.device,
                generator=torch.Generator().manual_seed(seed),
            )
            return local.update, local.seconds
        from dp.local import SECRET_SEED_BYTES, train_privately  # Opacus loads only here

        privacy, plan = self.config.privacy, self.sample_plan
        secret = seed if privacy.reproducible_noise else os.urandom(SECRET_SEED_BYTES)
        result = train_privately(
            self.server.model,
            x,
            y,
            epochs=training.local_epochs,
            batch_size=training.batch_size,
            learning_rate=training.learning_rate,
            momentum=training.momentum,
            noise_multiplier=plan.noise[client],
            max_grad_norm=privacy.clip,
            max_physical_batch=privacy.max_physical_batch,
            ghost_clipping=privacy.ghost_clipping,
            seed=secret,
            device=self.device,
            sampling_rate=plan.sampling_rate[client],
            expected_batch_size=plan.expected_batch(client),
        )
        self._pending.append(plan.entry(round_index, client, privacy.clip))
        delta = (result.parameters - self.server.global_vector).numpy()
        # the weight is the released noisy count: nothing the server decodes depends on len(y)
        return ClientUpdate(vector=delta, weight=plan.noisy_counts[client]), result.seconds

    def _aggregate(
        self, updates: dict[int, ClientUpdate], dropouts: dict, round_index: int
    ) -> AggregateOutcome:
        config, secure = self.config, self.config.secure
        if not secure.enabled:
            return plain_weighted_mean(updates, dropouts=dropouts)
        protocol = dict(
            threshold=secure.threshold,
            neighbours=secure.neighbours,
            identities=secure.identities,
            dropouts=dropouts,
            round_index=round_index,
            policy=self.policy,
        )
        if self.level is PrivacyLevel.CLIENT:
            encoder = self._client_encoder(len(updates))
            rotation_seed = DeterministicRandom(
                repr(("rotation", config.seed, round_index)).encode()
            )(32)
            outcome = secure_noisy_mean(
                updates,
                encoder=encoder,
                rotation_seed=rotation_seed,
                noise_random=lambda client: self._noise_source(round_index, client),
                **protocol,
            )
            self._pending.append(
                encoder.ledger_entry(
                    round_index=round_index + 1,
                    client_sampling_rate=self.client_plan.sampling_rate,
                    participants=tuple(outcome.contributors),
                )
            )
            return outcome
        return secure_weighted_mean(
            updates,
            max_weight=secure.max_weight,
            clip=secure.clip,
            precision_bits=secure.precision_bits,
            ring_bits=secure.ring_bits,
            rounding_random=lambda client: DeterministicRandom(
                f"{config.seed}/{round_index}/{client}".encode()
            ),
            **protocol,
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
        """Local training of every sampled client; non-finite updates are left out."""
        updates, seconds = {}, 0.0
        for client in cohort:
            updates[client], took = self._train(round_index, client)
            seconds += took
        updates, non_finite = finite_updates(updates)
        dropouts = {u: phase for u, phase in self._dropouts.items() if u in updates}
        return TrainedCohort(updates, dropouts, non_finite, seconds)

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
            return self._failed(
                round_index,
                cohort,
                trained.seconds,
                dropped=len(trained.non_finite) + (vanished if reached_the_protocol else 0),
                traffic=self._traffic(record.failure) if reached_the_protocol else (0, 0),
                non_finite=trained.non_finite,
            )
        return self._metrics(
            round_index,
            cohort,
            trained.seconds,
            record.outcome,
            epsilon=self._charge(),
            non_finite=trained.non_finite,
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
        )
