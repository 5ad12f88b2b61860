"""Empirical privacy audits in one run (Steinke, Nasr, Jagielski, NeurIPS 2023), at either level.

* **Sample level** (:func:`run_canary_audit`): m canaries (random 8x8 "images" with random
  labels) are each added to the training data with probability 1/2; DP-SGD trains once with the
  configuration's clip, batch, epochs and accountant, noise calibrated to the claimed epsilon
  (or without DP); each canary is scored by the trained model's log-likelihood of its label.
* **Client level** (:func:`run_client_canary_audit`): m canary clients, each holding an
  orthonormal direction (an update of norm C) with probability 1/2 and a zero update otherwise
  (they take part either way, as the server sees), go through the configured client-level
  mechanism: Poisson cohorts at the configured rate, the participation cap, the encoder's
  clipping, rotation, conditional rounding and decoding, and on each round's sum the noise the
  accounting counts on (the t - c honest shares, (z C)^2 per coordinate; the shares of other
  honest clients would only add to it). Each canary is scored, as
  the server could, by the released sums of the rounds it took part in projected on its
  direction. This audits the server-facing epsilon, the headline.

The best-scored canaries are guessed "in", the worst "out" (:func:`dp.audit.epsilon_lower_bound`
turns the correct guesses into a lower bound). The audit is sized from the claim: an audit with
r guesses can never refute an epsilon above :func:`dp.audit.max_refutable_epsilon` (3.49 for
100), so the number of canaries grows with the claim (:func:`dp.audit.guesses_to_refute`), up
to a cap; above the cap the result says the claim is beyond what the audit can refute. The
auditor's coin flips come from the operating system unless a seed is given (replays).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from dp.audit import (
    count_correct_guesses,
    epsilon_lower_bound,
    guesses_to_refute,
    max_refutable_epsilon,
)
from dp.ledger import PrivacyLedger, PrivacyLevel, SampleLevelEntry
from fl.core.data import load_digits_arrays
from fl.core.models import MLP
from secagg.randomness import DeterministicRandom, RandomSource

__all__ = ["AuditResult", "audit_size", "run_canary_audit", "run_client_canary_audit"]

Progress = Callable[[int, int], None]

MIN_CANARIES = 500
MAX_SAMPLE_CANARIES = 2000
MAX_CLIENT_CANARIES = 4000
_CHUNK = 256  # canary updates rounded at once (memory: a few MiB per 1,000 coordinates)


def audit_size(
    claimed_epsilon: float | None,
    *,
    guess_fraction: float,
    confidence: float,
    largest: int,
) -> int:
    """Canaries for an audit of ``claimed_epsilon``: enough guesses that a perfect attack would
    refute the claim plus one (:func:`dp.audit.guesses_to_refute`), at least
    :data:`MIN_CANARIES`, at most ``largest``."""
    if claimed_epsilon is None:
        return MIN_CANARIES
    guesses = guesses_to_refute(claimed_epsilon, confidence=confidence)
    return int(min(largest, max(MIN_CANARIES, math.ceil(guesses / guess_fraction))))


@dataclass(frozen=True)
class AuditResult:
    """One audit run.

    Attributes:
        level: "sample" or "client".
        claimed_epsilon: the epsilon the training claims (None: no DP).
        lower_bound: the empirical lower bound at ``confidence``.
        correct, guesses, canaries: the guessing game.
        max_refutable: the largest epsilon this many guesses could ever refute.
        refutable: whether the claim is below ``max_refutable`` (otherwise no outcome of this
            audit could contradict it, and the report says so).
        noise_multiplier: the noise used (0 without DP).
    """

    level: str
    claimed_epsilon: float | None
    delta: float
    lower_bound: float
    confidence: float
    correct: int
    guesses: int
    canaries: int
    max_refutable: float
    refutable: bool
    noise_multiplier: float
    seconds: float

    @property
    def refuted(self) -> bool:
        """Whether the audit contradicts the claim (a bug in the mechanism or accounting)."""
        return self.claimed_epsilon is not None and self.lower_bound > self.claimed_epsilon

    def to_dict(self) -> dict:
        return asdict(self) | {"refuted": self.refuted}


def _result(
    *,
    level: str,
    claimed: float | None,
    delta: float,
    scores: np.ndarray,
    included: np.ndarray,
    guess_fraction: float,
    confidence: float,
    noise: float,
    started: float,
) -> AuditResult:
    half = max(1, round(guess_fraction * scores.size / 2))
    correct, guesses = count_correct_guesses(scores, included, guesses_in=half, guesses_out=half)
    largest = max_refutable_epsilon(guesses, confidence=confidence)
    return AuditResult(
        level=level,
        claimed_epsilon=claimed,
        delta=delta,
        lower_bound=epsilon_lower_bound(correct, guesses, confidence=confidence),
        confidence=confidence,
        correct=correct,
        guesses=guesses,
        canaries=int(scores.size),
        max_refutable=largest,
        refutable=claimed is None or claimed < largest,
        noise_multiplier=noise,
        seconds=time.perf_counter() - started,
    )


def _spent(sigma: float, delta: float, rate: float, steps: int, accountant: str) -> float:
    """Epsilon of ``steps`` DP-SGD steps at sampling rate ``rate`` and noise ``sigma``."""
    ledger = PrivacyLedger(level=PrivacyLevel.SAMPLE, delta=delta, accountant=accountant)
    ledger.record_sample(SampleLevelEntry(1, 1, rate, sigma, steps, 1.0))
    return ledger.client_epsilon(1)


def _calibrated_noise(
    epsilon: float, delta: float, rate: float, steps: int, accountant: str
) -> float:
    from dp.accounting import calibrate

    return calibrate(
        lambda sigma: _spent(sigma, delta, rate, steps, accountant),
        epsilon,
        what="DP-SGD noise multiplier",
        progress=lambda done, total: None,
    )


def run_canary_audit(
    *,
    epsilon: float | None,
    noise_multiplier: float | None = None,
    delta: float = 1e-5,
    canaries: int | None = None,
    base_examples: int = 1000,
    epochs: int = 30,
    batch_size: int = 64,
    learning_rate: float = 0.5,
    clip: float = 1.0,
    accountant: str = "rdp",
    guess_fraction: float = 0.2,
    confidence: float = 0.95,
    seed: int | None = None,
    progress: Progress | None = None,
) -> AuditResult:
    """Train once with canaries (DP-SGD at the claimed epsilon, or without DP) and return the
    empirical epsilon lower bound.

    Args:
        epsilon: the claimed epsilon of DP-SGD; None trains without DP (checks the audit's
            power), unless ``noise_multiplier`` is given.
        noise_multiplier: train with this noise instead; the claim is then the epsilon it
            spends over the audit's training.
        delta: the claimed delta.
        canaries: m; by default sized from the claim (:func:`audit_size`, at most 2,000).
        base_examples: real training examples (digits) besides the canaries.
        epochs, batch_size, learning_rate, clip: training (DP-SGD: Poisson sampling, clipping).
        accountant: the accountant the noise is calibrated with ("rdp", "rdp-classic", "prv").
        guess_fraction: fraction of canaries guessed (half "in", half "out").
        confidence: of the lower bound.
        seed: replay the canaries and their coin flips (tests); None draws from os.urandom.
        progress: ``progress(epochs done, epochs)``.
    """
    from fl.core.params import load_vector, to_vector

    started = time.perf_counter()
    if noise_multiplier is not None:
        # the claim of a fixed noise: what it spends over the audit's training, at the
        # default audit size (the canaries change the batch count only slightly)
        rough = math.ceil((base_examples + MIN_CANARIES / 2) / batch_size)
        epsilon = _spent(noise_multiplier, delta, 1 / rough, epochs * rough, accountant)
    if canaries is None:
        canaries = audit_size(
            epsilon,
            guess_fraction=guess_fraction,
            confidence=confidence,
            largest=MAX_SAMPLE_CANARIES,
        )
    generator = np.random.default_rng(seed)  # the auditor's coins; seeded only for replays
    x, y = load_digits_arrays()
    x, y = x[:base_examples], y[:base_examples]
    canary_x = generator.random((canaries, x.shape[1])).astype(np.float32)
    canary_y = generator.integers(0, 10, canaries)
    included = generator.random(canaries) < 0.5
    train_x = np.concatenate([x, canary_x[included]])
    train_y = np.concatenate([y, canary_y[included]])
    torch.manual_seed(0 if seed is None else seed)
    model = MLP(x.shape[1], 10, hidden=256)
    noise = 0.0
    batches = math.ceil(len(train_y) / batch_size)
    if noise_multiplier is not None:
        noise = noise_multiplier
        epsilon = _spent(noise, delta, 1 / batches, epochs * batches, accountant)
    elif epsilon is not None:
        noise = _calibrated_noise(epsilon, delta, 1 / batches, epochs * batches, accountant)
    chunk = max(1, epochs // 10)  # a few epochs per call, for progress (momentum 0: no state)
    for first in range(0, epochs, chunk):
        count = min(chunk, epochs - first)
        chunk_seed = int(generator.integers(2**62))
        if epsilon is None:
            from fl.core.config import TrainingConfig
            from fl.core.training import train_locally

            training = TrainingConfig(
                local_epochs=count, batch_size=batch_size, learning_rate=learning_rate
            )
            result = train_locally(
                model,
                to_vector(model),
                train_x,
                train_y,
                training=training,
                generator=torch.Generator().manual_seed(chunk_seed),
                device=torch.device("cpu"),
            )
            load_vector(model, to_vector(model) + torch.as_tensor(result.update.vector))
        else:
            from dp.local import train_privately

            trained = train_privately(
                model,
                train_x,
                train_y,
                epochs=count,
                batch_size=batch_size,
                learning_rate=learning_rate,
                momentum=0.0,
                noise_multiplier=noise,
                max_grad_norm=clip,
                max_physical_batch=256,
                ghost_clipping=False,
                seed=chunk_seed,
                device=torch.device("cpu"),
            )
            load_vector(model, trained.parameters)
        if progress is not None:
            progress(first + count, epochs)
    with torch.no_grad():
        logits = model(torch.as_tensor(canary_x))
        scores = -nn.functional.cross_entropy(
            logits, torch.as_tensor(canary_y), reduction="none"
        ).numpy()
    return _result(
        level=PrivacyLevel.SAMPLE.value,
        claimed=epsilon,
        delta=delta,
        scores=scores,
        included=included,
        guess_fraction=guess_fraction,
        confidence=confidence,
        noise=noise,
        started=started,
    )


def _poisson(eligible: np.ndarray, rate: float, random_bytes: RandomSource) -> np.ndarray:
    """Each eligible canary with probability ``rate``, exactly (``rate = m / 2^e``: a uniform
    e-bit integer below m), from ``random_bytes``."""
    numerator, denominator = float(rate).as_integer_ratio()
    bits = denominator.bit_length() - 1
    width = (bits + 7) // 8
    stream = random_bytes(width * eligible.size)
    draws = [
        int.from_bytes(stream[i * width : (i + 1) * width], "little") >> (8 * width - bits)
        for i in range(eligible.size)
    ]
    return eligible[np.asarray(draws, dtype=object) < numerator] if draws else eligible


def _orthonormal_directions(
    count: int, dimension: int, generator: np.random.Generator
) -> np.ndarray:
    """``count`` orthonormal canary directions: rows of a Hadamard matrix of the largest
    power-of-two size within ``dimension``, picked at random, times random signs (so projecting
    a sum onto one direction sees no other canary)."""
    from dp.distributed import hadamard_rotate

    size = 1 << int(math.log2(dimension))
    if count > size:
        raise ValueError(f"at most {size} orthogonal canaries fit in {dimension} coordinates")
    basis = np.zeros((count, size))
    basis[np.arange(count), generator.permutation(size)[:count]] = 1.0
    signs = np.where(generator.random(size) < 0.5, -1.0, 1.0)
    directions = np.zeros((count, dimension))
    directions[:, :size] = hadamard_rotate(basis, signs, inverse=True)
    return directions


def _model_dimension(config) -> int:
    from fl.core.data import build_federated_data
    from fl.core.models import build_model

    data = build_federated_data(config.data, clients=config.training.clients, seed=config.seed)
    model = build_model(config.model, features=data.num_features, classes=data.num_classes)
    return sum(p.numel() for p in model.parameters())


def run_client_canary_audit(
    config,
    *,
    dp: bool = True,
    dimension: int | None = None,
    canaries: int | None = None,
    guess_fraction: float = 0.2,
    confidence: float = 0.95,
    seed: int | None = None,
    progress: Progress | None = None,
) -> AuditResult:
    """Run the configured client-level mechanism over canary clients and return the empirical
    lower bound on the epsilon against the server (the run's headline).

    The canaries' directions are orthonormal, so without noise every canary is told apart
    exactly (the power the DP-off audit shows); at most one canary per coordinate fits.

    Args:
        config: a client-level :class:`fl.core.config.RunConfig` (rounds, clients and cohort fix the
            sampling rate and the participation cap; the privacy section the calibration and
            the mechanism).
        dp: False runs the same rounds without noise (shows the audit's power).
        dimension: the update length (default: the configured model's parameter count).
        canaries: m canary clients; by default sized from the claim (at most 4,000).
        guess_fraction, confidence: the guessing game.
        seed: replay the canaries, coins, cohorts, rounding and noise (tests); None uses
            os.urandom.
        progress: ``progress(rounds done, rounds)``.
    """
    from dp.distributed import DistributedNoiseEncoder
    from fl.core.privacy import ClientLevelPlan, client_level_claim, plan_client_level

    started = time.perf_counter()
    privacy, training = config.privacy, config.training
    dimension = dimension or _model_dimension(config)
    plan = plan_client_level(config, dimension, progress=lambda done, total: None)
    claim = client_level_claim(config, plan, dimension)
    if canaries is None:
        canaries = audit_size(
            claim,
            guess_fraction=guess_fraction,
            confidence=confidence,
            largest=min(MAX_CLIENT_CANARIES, 1 << int(math.log2(dimension))),
        )
    if not dp:
        plan = ClientLevelPlan(plan.sampling_rate, 0.0, plan.max_participations, None)

    def source(*label: object) -> RandomSource:
        return (
            DeterministicRandom(repr((seed, *label)).encode()) if seed is not None else os.urandom
        )

    generator = np.random.default_rng(seed)  # the auditor's coins and canaries
    included = generator.random(canaries) < 0.5
    directions = _orthonormal_directions(canaries, dimension, generator)
    scores = np.zeros(canaries)
    taken = np.zeros(canaries, dtype=np.int64)
    cap = plan.max_participations
    # the noise the accounting counts on the sum: the t - c honest shares a server colluding
    # with c clients cannot remove, (z C)^2 per coordinate (the other shares only add to it)
    sum_noise = plan.noise_multiplier
    for round_index in range(training.rounds):
        eligible = np.flatnonzero(taken < cap) if cap is not None else np.arange(canaries)
        cohort = _poisson(eligible, plan.sampling_rate, source("cohort", round_index))
        if cohort.size:
            # the canaries' round: that noise on their sum, in a ring sized for them
            encoder = DistributedNoiseEncoder(
                mechanism=privacy.mechanism,
                dimension=dimension,
                l2_clip=privacy.clip,
                noise_multiplier=sum_noise,
                cohort=int(cohort.size),
                noise_shares=1,
                ring_bits=max(privacy.ring_bits, 48),
            )
            rotation = source("rotation", round_index)(32)
            total = encoder.noise(random_bytes=source("noise", round_index))
            for start in range(0, cohort.size, _CHUNK):  # included canaries send their direction
                members = cohort[start : start + _CHUNK]
                updates = directions[members] * (privacy.clip * included[members])[:, None]
                rounded = encoder.round_updates(
                    updates,
                    rotation_seed=rotation,
                    random_bytes=source("round", round_index, start),
                )
                total = total + rounded.sum(axis=0)
            released = encoder.decode(
                encoder.to_ring(total), contributors=1, rotation_seed=rotation
            )
            scores[cohort] += directions[cohort] @ released  # the server knows the cohort
            taken[cohort] += 1
        if progress is not None:
            progress(round_index + 1, training.rounds)
    return _result(
        level=PrivacyLevel.CLIENT.value,
        claimed=claim if dp else None,
        delta=privacy.delta,
        scores=scores,
        included=included,
        guess_fraction=guess_fraction,
        confidence=confidence,
        noise=plan.noise_multiplier,
        started=started,
    )
