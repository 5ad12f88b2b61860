"""The empirical privacy audit of DP-SGD training (one run, Steinke et al. 2023).

m canaries (random 8x8 "images" with random labels) are each added to a client's training data
with probability 1/2; the client trains once (DP-SGD at the claimed epsilon, or without DP);
each canary is scored by the trained model's log-likelihood of its label; the best-scored are
guessed "in", the worst "out"; :func:`dp.audit.epsilon_lower_bound` turns the correct guesses
into an epsilon lower bound. The canary assignment is the auditor's secret coin flips, drawn
from the operating system unless a seed is given (replays).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from dp.audit import count_correct_guesses, epsilon_lower_bound
from dp.ledger import PrivacyLedger, PrivacyLevel, SampleLevelEntry
from fl.data import load_digits_arrays
from fl.models import MLP

__all__ = ["AuditResult", "run_canary_audit"]


@dataclass(frozen=True)
class AuditResult:
    """One audit run.

    Attributes:
        claimed_epsilon: the epsilon the training claims (None: no DP).
        lower_bound: the empirical lower bound at ``confidence``.
        correct, guesses, canaries: the guessing game.
        noise_multiplier: the DP-SGD noise used (0 without DP).
    """

    claimed_epsilon: float | None
    delta: float
    lower_bound: float
    confidence: float
    correct: int
    guesses: int
    canaries: int
    noise_multiplier: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _calibrated_noise(epsilon: float, delta: float, rate: float, steps: int) -> float:
    from dp.accounting import calibrate

    def spent(sigma: float) -> float:
        ledger = PrivacyLedger(level=PrivacyLevel.SAMPLE, delta=delta)
        ledger.record_sample(SampleLevelEntry(1, 1, rate, sigma, steps, 1.0))
        return ledger.client_epsilon(1)

    return calibrate(spent, epsilon, what="DP-SGD noise multiplier")


def run_canary_audit(
    *,
    epsilon: float | None,
    delta: float = 1e-5,
    canaries: int = 500,
    base_examples: int = 1000,
    epochs: int = 30,
    batch_size: int = 64,
    learning_rate: float = 0.5,
    clip: float = 1.0,
    guess_fraction: float = 0.2,
    confidence: float = 0.95,
    seed: int | None = None,
) -> AuditResult:
    """Train once with canaries and return the empirical epsilon lower bound.

    Args:
        epsilon: the claimed epsilon of DP-SGD; None trains without DP (checks the audit's power).
        delta: the claimed delta.
        canaries: m.
        base_examples: real training examples (digits) besides the canaries.
        epochs, batch_size, learning_rate, clip: training (DP-SGD: Poisson sampling, clipping).
        guess_fraction: fraction of canaries guessed (half "in", half "out").
        confidence: of the lower bound.
        seed: replay the canaries and their coin flips (tests); None draws from os.urandom.
    """
    started = time.perf_counter()
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
    torch_seed = int(generator.integers(2**62))
    noise = 0.0
    if epsilon is None:
        from fl.client import train_locally
        from fl.config import TrainingConfig
        from fl.params import load_vector, to_vector

        training = TrainingConfig(
            local_epochs=epochs, batch_size=batch_size, learning_rate=learning_rate
        )
        result = train_locally(
            model,
            to_vector(model),
            train_x,
            train_y,
            training=training,
            generator=torch.Generator().manual_seed(torch_seed),
            device=torch.device("cpu"),
        )
        load_vector(model, to_vector(model) + torch.as_tensor(result.update.vector))
    else:
        from dp.local import train_privately
        from fl.params import load_vector

        batches = math.ceil(len(train_y) / batch_size)
        noise = _calibrated_noise(epsilon, delta, 1 / batches, epochs * batches)
        trained = train_privately(
            model,
            train_x,
            train_y,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            momentum=0.0,
            noise_multiplier=noise,
            max_grad_norm=clip,
            max_physical_batch=256,
            ghost_clipping=False,
            seed=torch_seed,
            device=torch.device("cpu"),
        )
        load_vector(model, trained.parameters)
    with torch.no_grad():
        logits = model(torch.as_tensor(canary_x))
        scores = -nn.functional.cross_entropy(
            logits, torch.as_tensor(canary_y), reduction="none"
        ).numpy()
    half = max(1, round(guess_fraction * canaries / 2))
    correct, guesses = count_correct_guesses(scores, included, guesses_in=half, guesses_out=half)
    return AuditResult(
        claimed_epsilon=epsilon,
        delta=delta,
        lower_bound=epsilon_lower_bound(correct, guesses, confidence=confidence),
        confidence=confidence,
        correct=correct,
        guesses=guesses,
        canaries=canaries,
        noise_multiplier=noise,
        seconds=time.perf_counter() - started,
    )
