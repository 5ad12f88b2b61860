"""Sample-level differential privacy for local training: DP-SGD with Opacus.

The only module of :mod:`dp` that imports torch or Opacus. Each call privatises a *fresh copy*
of the caller's model (calling ``make_private`` twice on one module would attach its hooks twice)
and hands the trained parameters back as a plain tensor, so the federation keeps working with
ordinary ``nn.Module`` objects. Accounting is not done here: the caller records the mechanism
(sampling rate, noise multiplier, steps) in its ledger (:mod:`dp.ledger`), which persists across
rounds and in checkpoints.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dp.errors import PrivacyConfigError

__all__ = [
    "SECRET_SEED_BYTES",
    "PrivateTrainingResult",
    "make_trainable",
    "secret_generators",
    "train_privately",
]

SECRET_SEED_BYTES = 16
"""Bytes of secret seed a caller draws (from ``os.urandom``) for the sampling and the noise."""


def _generator_seeds(seed: int | bytes) -> tuple[int, int]:
    """Two independent 64-bit seeds (the full width ``torch.Generator.manual_seed`` takes), one
    for the Poisson sampling and one for the noise, expanded from ``seed`` by NumPy's
    SeedSequence (a hash of all its bits)."""
    entropy = int.from_bytes(seed, "little") if isinstance(seed, bytes) else int(seed)
    words = np.random.SeedSequence(entropy).generate_state(2, np.uint64)
    return int(words[0]), int(words[1])


def secret_generators(
    seed: int | bytes, device: torch.device | str = "cpu"
) -> tuple[torch.Generator, torch.Generator]:
    """The Poisson sampling's generator (CPU) and the noise's (on ``device``), from one secret."""
    sampling_seed, noise_seed = _generator_seeds(seed)
    return (
        torch.Generator().manual_seed(sampling_seed),
        torch.Generator(device=device).manual_seed(noise_seed),
    )


@dataclass(frozen=True, eq=False)
class PrivateTrainingResult:
    """The trained parameters and what the accountant needs to know.

    Attributes:
        parameters: the locally trained parameters as one flat float32 CPU tensor.
        sampling_rate: Poisson sampling rate of the examples (batch size / examples).
        steps: optimizer steps taken (each one a sampled Gaussian mechanism).
        loss: mean training loss.
        seconds: wall time.
    """

    parameters: torch.Tensor
    sampling_rate: float
    steps: int
    loss: float
    seconds: float


def make_trainable(model: nn.Module) -> nn.Module:
    """Return ``model`` if Opacus supports all its layers, else a fixed copy (e.g. BatchNorm ->
    GroupNorm), checked before any training.

    Raises:
        PrivacyConfigError: layers that Opacus can neither handle nor replace.
    """
    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return model
    fixed = ModuleValidator.fix(copy.deepcopy(model))
    remaining = ModuleValidator.validate(fixed, strict=False)
    if remaining:
        raise PrivacyConfigError(
            "the model has layers DP-SGD cannot train: "
            + "; ".join(str(e) for e in remaining[:3])
            + "; replace them (for example BatchNorm with GroupNorm)"
        )
    return fixed


def train_privately(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    momentum: float,
    noise_multiplier: float,
    max_grad_norm: float,
    max_physical_batch: int,
    ghost_clipping: bool,
    seed: int | bytes,
    device: torch.device,
    sampling_rate: float | None = None,
    expected_batch_size: float | None = None,
) -> PrivateTrainingResult:
    """DP-SGD on one client's examples: Poisson sampling, per-sample clipping, Gaussian noise.

    Args:
        model: the starting model; it is copied, never modified.
        x, y: the client's examples.
        epochs: passes over the data (each ``len(y) / batch_size`` expected steps).
        batch_size: expected logical batch; the sampling rate is ``batch_size / len(y)``.
        learning_rate, momentum: SGD settings.
        noise_multiplier: noise standard deviation over the clipping bound.
        max_grad_norm: per-sample gradient clipping bound.
        max_physical_batch: upper bound on examples in memory at once (BatchMemoryManager).
        ghost_clipping: use Opacus' ghost clipping (less memory for large layers).
        seed: the secret both the Poisson sampling and the noise are seeded from: 16 bytes from
            ``os.urandom`` in production (a known seed reveals the batches and the noise), a
            replayable integer in reproducible simulations. Each of the two torch generators
            gets a 64-bit seed derived from it; torch's generator is not a cryptographic one
            (Opacus' ``secure_mode`` needs a package not available here, see SECURITY.md).
        device: where to train (CUDA when available).
        sampling_rate: the public Poisson sampling rate q, with ``round(1 / q)`` steps an
            epoch; by default ``1 / ceil(len(y) / batch_size)``, as Opacus derives it from the
            data set size.
        expected_batch_size: the public batch size the noisy gradient sum is averaged by; by
            default ``q len(y)``. Passing q and this one from a released (noisy) record count
            keeps every number DP-SGD uses independent of the exact count.
    """
    started = time.perf_counter()
    local = copy.deepcopy(model).to(device)
    local.train()
    dataset = TensorDataset(torch.as_tensor(x), torch.as_tensor(y))
    sampling, noise = secret_generators(seed, device)
    if sampling_rate is None:
        loader = DataLoader(dataset, batch_size=min(batch_size, len(dataset)), generator=sampling)
    else:
        # Poisson sampling at the given public rate (Opacus would derive it from len(y)), for
        # 1 / q steps an epoch (counted exactly: int(1 / q) can fall one short in floats)
        loader = DPDataLoader(dataset, sample_rate=sampling_rate, generator=sampling)
        loader.batch_sampler.steps = round(1 / sampling_rate)
    optimizer = torch.optim.SGD(local.parameters(), lr=learning_rate, momentum=momentum)
    criterion = nn.CrossEntropyLoss()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus notes that secure_mode is off (see SECURITY.md)
        private = PrivacyEngine(accountant="rdp").make_private(
            module=local,
            optimizer=optimizer,
            criterion=criterion,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=sampling_rate is None,
            noise_generator=noise,
            grad_sample_mode="ghost" if ghost_clipping else "hooks",
        )
    if ghost_clipping:
        private_model, private_optimizer, criterion, private_loader = private
    else:
        private_model, private_optimizer, private_loader = private
    if expected_batch_size is not None:
        private_optimizer.expected_batch_size = expected_batch_size
    sampling_rate = private_loader.sample_rate if sampling_rate is None else sampling_rate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Opacus' notes on backward hooks
        losses, steps = _train(
            private_model,
            private_optimizer,
            private_loader,
            criterion,
            epochs,
            max_physical_batch,
            device,
        )
    parameters = torch.cat(
        [p.detach().reshape(-1).to("cpu", torch.float32) for p in local.parameters()]
    )
    return PrivateTrainingResult(
        parameters=parameters,
        sampling_rate=sampling_rate,
        steps=steps,
        loss=float(np.mean(losses)) if losses else float("nan"),
        seconds=time.perf_counter() - started,
    )


def _train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    criterion: nn.Module,
    epochs: int,
    max_physical_batch: int,
    device: torch.device,
) -> tuple[list[float], int]:
    """The DP-SGD loop over Opacus' wrapped objects; returns the losses and the steps taken."""
    losses: list[float] = []
    steps = 0
    for _ in range(epochs):
        with BatchMemoryManager(
            data_loader=loader, max_physical_batch_size=max_physical_batch, optimizer=optimizer
        ) as batches:
            for features, labels in batches:
                features, labels = features.to(device), labels.to(device)
                optimizer.zero_grad()
                scores = model(features)
                # an empty Poisson sample still takes a (pure-noise) step: skipping it would
                # reveal that the batch was empty
                loss = criterion(scores, labels) if len(labels) else scores.sum() * 0.0
                loss.backward()
                optimizer.step()
                if len(labels):
                    losses.append(float(loss.detach()))
        steps += len(loader)
    return losses, steps
