"""Sample-level DP-SGD on every rank (Opacus), the noisy gradients summed by secure aggregation.

Each rank runs DP-SGD on its own examples: Poisson sampling, per-example clipping to
``max_grad_norm``, Gaussian noise of standard deviation ``noise_multiplier * max_grad_norm`` on
its clipped sum, division by its expected batch size. Only then does the gradient leave the
rank, masked (:class:`~.allreduce.SecureAllReduce`); the ranks average the secure sum over the
ranks that contributed and step.

**Whose noise protects whom.** Every rank adds the full noise its own epsilon needs, so each
rank's guarantee holds against everyone else (the other ranks and whoever sees the models,
colluding or not) with no trust in anyone's noise but its own: the ledger's epsilon is the
DP-SGD epsilon of that rank's ``steps`` sampled Gaussian mechanisms. The secure sum adds
protection that is *not* counted: the others see the sum, whose noise is n times the variance of
one rank's. (Opacus' own distributed optimizer adds the noise on rank 0 only, which protects
rank 1's examples only if rank 0 is honest and the sum is the only thing rank 0 sees.)

Every rank must take the same number of steps (each step is one secure all-reduce of all ranks):
:func:`make_private_rank` checks that the ranks' loaders have as many batches each.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader

from dp.accounting import AccountantKind
from dp.ledger import PrivacyLedger, PrivacyLevel, SampleLevelEntry
from dp.local import SECRET_SEED_BYTES, secret_generators
from fl.engines.distributed.allreduce import ReduceReport, SecureAllReduce
from fl.errors import InputError

__all__ = ["PrivateRank", "SecurePrivateOptimizer", "make_private_rank"]


@dataclass(eq=False)
class SecurePrivateOptimizer:
    """An Opacus optimizer whose step sums the ranks' noisy gradients securely before stepping.

    Use it as the optimizer of the training loop: ``zero_grad()``, backward, ``step()``.

    Attributes:
        private: the rank's Opacus ``DPOptimizer`` (clipping, noise, its own accountant hook).
        reducer: the secure all-reduce of the ranks' gradients.
        steps: noisy gradients this rank has released (each one a sampled Gaussian mechanism).
        last_report: the last secure all-reduce's report (contributors, timings).
    """

    private: DPOptimizer
    reducer: SecureAllReduce
    steps: int = 0
    last_report: ReduceReport | None = field(default=None, repr=False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients and the per-example gradients."""
        self.private.zero_grad(set_to_none)

    def step(self) -> bool:
        """Clip, noise, sum securely over the ranks, average, step. False when Opacus skipped
        the step (a virtual step of a larger logical batch): nothing was released then."""
        if not self.private.pre_step():
            return False
        self.steps += 1  # counted before the sum: a released noisy gradient is spent even if
        # the all-reduce then fails
        gradients = [p.grad for p in self.private.params if p.grad is not None]
        report = self.reducer(gradients)
        contributors = len(report.contributors)
        with torch.no_grad():
            for gradient in gradients:
                gradient.div_(contributors)
        self.private.original_optimizer.step()
        self.last_report = report
        return True

    @property
    def param_groups(self) -> list[dict]:
        """The wrapped optimizer's parameter groups (for learning-rate schedulers)."""
        return self.private.param_groups


@dataclass(eq=False)
class PrivateRank:
    """One rank's private training: the model, optimizer and loader to train with, and its ledger.

    Attributes:
        module: the model wrapped for per-example gradients (train and evaluate this one).
        optimizer: zero_grad / step as usual; steps sum the ranks' noisy gradients securely.
        data_loader: Poisson-sampled batches of this rank's examples (secret sampling).
        sampling_rate: q, the probability each example is in a batch.
        noise_multiplier: the noise's standard deviation over ``max_grad_norm``.
        max_grad_norm: the per-example clipping bound.
        delta: the delta epsilon is reported at.
        accountant: which accountant computes epsilon.
    """

    module: nn.Module
    optimizer: SecurePrivateOptimizer
    data_loader: DataLoader
    sampling_rate: float
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: AccountantKind = AccountantKind.RDP

    def ledger(self) -> PrivacyLedger:
        """This rank's privacy ledger: one entry with every step released so far (``write``
        it to a folder for ``privacy.json``)."""
        ledger = PrivacyLedger(
            level=PrivacyLevel.SAMPLE, delta=self.delta, accountant=self.accountant
        )
        if self.optimizer.steps:
            ledger.record_sample(
                SampleLevelEntry(
                    round=0,
                    client=dist.get_rank(),
                    sampling_rate=self.sampling_rate,
                    noise_multiplier=self.noise_multiplier,
                    steps=self.optimizer.steps,
                    max_grad_norm=self.max_grad_norm,
                )
            )
        return ledger

    def epsilon(self) -> float:
        """The epsilon this rank's examples have spent so far, at ``delta``."""
        return self.ledger().client_epsilon(dist.get_rank())


def make_private_rank(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    delta: float,
    reducer: SecureAllReduce | None = None,
    accountant: AccountantKind | str = AccountantKind.RDP,
    seed: int | bytes | None = None,
    **reducer_options: object,
) -> PrivateRank:
    """Make this rank's training sample-level private, with the gradients summed securely.

    Call it on every rank of the group, after ``dist.init_process_group``, with the rank's own
    model copy (identical on every rank), optimizer and loader of its examples; then train with
    the returned ``module``, ``optimizer`` and ``data_loader`` (no ``DistributedDataParallel``:
    the optimizer does the all-reduce).

    Args:
        module, optimizer, data_loader: the rank's model, optimizer and examples; the loader's
            batch size over its data set size sets the sampling rate, as in Opacus.
        noise_multiplier: noise standard deviation over ``max_grad_norm`` (each rank's own).
        max_grad_norm: per-example clipping bound.
        delta: the delta each rank's epsilon is reported at.
        reducer: the secure all-reduce to use; one over the default group, created with
            ``reducer_options`` (clip, timeout, ...), when None.
        accountant: "rdp" or "prv", for the ledger's epsilon.
        seed: the secret the Poisson sampling and the noise are drawn from (16 bytes of
            ``os.urandom`` by default; a known seed reveals both, so fix it only in tests).

    Raises:
        InputError: a setting is out of range, or the ranks' loaders have different numbers of
            batches (every step is a sum over all ranks, so each must take as many).
    """
    if not (noise_multiplier > 0 and max_grad_norm > 0):
        raise InputError(
            f"noise_multiplier ({noise_multiplier}) and max_grad_norm ({max_grad_norm}) must "
            "be positive"
        )
    if not 0 < delta < 1:
        raise InputError(f"delta must be in (0, 1), got {delta}")
    if reducer is None:
        reducer = SecureAllReduce(**reducer_options)  # type: ignore[arg-type]
    elif reducer_options:
        raise InputError("pass reducer options or a reducer, not both")
    _check_equal_batches(len(data_loader), reducer)
    sampling, noise = secret_generators(
        os.urandom(SECRET_SEED_BYTES) if seed is None else seed,
        next(module.parameters()).device,
    )
    loader = DPDataLoader.from_data_loader(data_loader, generator=sampling)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus notes that secure_mode is off (SECURITY.md)
        private_module, private_optimizer, _ = PrivacyEngine(accountant="rdp").make_private(
            module=module,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=False,  # the loader above already samples, from the secret
            noise_generator=noise,
        )
    return PrivateRank(
        module=private_module,
        optimizer=SecurePrivateOptimizer(private_optimizer, reducer),
        data_loader=loader,
        sampling_rate=loader.sample_rate,
        noise_multiplier=float(noise_multiplier),
        max_grad_norm=float(max_grad_norm),
        delta=float(delta),
        accountant=AccountantKind(accountant),
    )


def _check_equal_batches(batches: int, reducer: SecureAllReduce) -> None:
    counts = [torch.zeros(1, dtype=torch.int64) for _ in reducer.members]
    dist.all_gather(counts, torch.tensor([batches], dtype=torch.int64), group=reducer.group)
    per_rank = {rank: int(count) for rank, count in zip(reducer.members, counts, strict=True)}
    if len(set(per_rank.values())) > 1:
        raise InputError(
            f"the ranks' loaders have different numbers of batches per epoch ({per_rank}); "
            "every step sums all ranks' gradients, so give every rank as many batches (the same "
            "shard size and batch size, e.g. drop the remainder when sharding)"
        )
