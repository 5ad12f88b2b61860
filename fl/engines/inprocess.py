"""The embedded default engine: a whole federation in one process.

Each round the server samples a cohort, every sampled client trains locally from the global
model, and the updates are averaged with weights n_k / n through secure aggregation (virtual
clients passing the protocol's real byte messages) or in the clear. Clients drop out of the
protocol at random phases. Everything the run draws - data split, cohorts, dropouts, training
order, stochastic rounding - derives from ``config.seed`` and the round and client numbers, so a
resumed run repeats an uninterrupted one exactly. Protocol keys and masks are not seeded: they
come from ``os.urandom`` and cancel out of the sum.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import secagg
from dp.errors import DPError
from dp.ledger import PrivacyLedger, PrivacyLevel
from fl.algorithms.fedavg import FedAvgServer
from fl.core.budget import check_extension, epsilon_spent, projected_epsilon
from fl.core.central import plan_central
from fl.core.checkpoint import Checkpoint, save_checkpoint
from fl.core.config import Device, RunConfig, ScheduleMode
from fl.core.data import build_federated_data
from fl.core.models import build_model, check_model_fits
from fl.core.privacy import plan_client_level, plan_sample_level, spent_summary
from fl.core.report import (
    RoundMetrics,
    append_metrics,
    plot_training,
    read_summary,
    reconcile_metrics,
    write_summary,
)
from fl.core.run_folder import (
    check_output,
    create_output,
    latest_run_folder,
    new_run_folder,
    write_config,
)
from fl.engines.federation import Federation, RoundProgress
from fl.engines.pool import WorkerPool, worker_count
from fl.errors import CheckpointError, ConfigError, FLError, NonFiniteUpdateWarning
from secagg.encoding import FixedPointEncoder

__all__ = [
    "RunResult",
    "RunStart",
    "check_output",
    "latest_run_folder",
    "new_run_folder",
    "resolve_device",
    "run_federation",
]


@dataclass(frozen=True, eq=False)
class RunResult:
    """A finished (or budget-stopped) run.

    Attributes:
        rounds_run: rounds trained by this call (0 when a resumed run had nothing to do).
        nothing_to_do: why this call trained nothing and wrote nothing, if so.
        files: the files of ``out`` this run has written.
    """

    config: RunConfig
    history: tuple[RoundMetrics, ...]
    model: nn.Module
    summary: dict
    out: Path
    rounds_run: int = 0
    nothing_to_do: str | None = None
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunStart:
    """What a run is about to do, known once every check has passed (before round 1).

    Attributes:
        config: the settings.
        out: the output folder.
        completed_rounds: rounds done before this call (0 for a new run).
        epsilon_spent: privacy spent so far (None without DP).
        epsilon_target: the target the noise was calibrated for (None without one).
        calibrated_rounds: the rounds that calibration covers.
        epsilon_projected: the epsilon after ``training.rounds`` if every round releases, when
            the run goes past ``calibrated_rounds`` (None otherwise).
        workers: the processes the clients' work runs in (1: this process).
        workers_requested: the processes asked for.
        workers_reason: why ``workers`` is below ``workers_requested`` (None when it is not):
            a cohort too small to share (:func:`fl.engines.pool.worker_count`), or a GPU.
    """

    config: RunConfig
    out: Path
    completed_rounds: int
    epsilon_spent: float | None
    epsilon_target: float | None
    calibrated_rounds: int | None
    epsilon_projected: float | None
    workers: int = 1
    workers_requested: int = 1
    workers_reason: str | None = None


def resolve_device(device: Device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a configuration error."""
    if device is Device.CUDA and not torch.cuda.is_available():
        raise ConfigError("device", "cuda", "auto or cpu: no CUDA device is available here")
    if device is Device.CPU or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def _preflight(config: RunConfig, dimension: int) -> None:
    """Build the round's encoder and protocol configuration once, so bad values fail now."""
    secure = config.secure
    cohort = config.training.cohort_size
    try:
        needed = FixedPointEncoder.required_ring_bits(
            cohort, secure.max_weight, secure.clip, secure.precision_bits
        )
        ring_bits = secure.ring_bits or (32 if needed <= 32 else 64)
        encoder = FixedPointEncoder(
            num_clients=cohort,
            max_weight=secure.max_weight,
            clip=secure.clip,
            precision_bits=secure.precision_bits,
            ring_bits=ring_bits,
        )
    except secagg.ConfigurationError as error:
        raise ConfigError("secure", f"{cohort} clients per round", str(error)) from None
    try:
        secagg.SecAggConfig.create(
            range(1, cohort + 1),
            dimension + 1,
            threshold=secure.threshold,
            neighbours=secure.neighbours,
            ring_bits=ring_bits,
            input_bound=encoder.entry_bound,
        )
    except secagg.ConfigurationError as error:
        raise ConfigError(
            "secure", f"threshold={secure.threshold}, neighbours={secure.neighbours}", str(error)
        ) from None


def _check_weights(config: RunConfig, data: Any) -> None:
    """Refuse, before round 1, a client whose example count (its FedAvg weight) is above
    ``secure.max_weight``: the encoder would refuse it mid-run (it never clips a weight)."""
    largest = max(data.client_sizes)
    if largest > config.secure.max_weight:
        raise ConfigError(
            "secure.max_weight",
            config.secure.max_weight,
            f"at least {largest}: a client holds {largest} examples, and its weight in the "
            "secure sum is its example count (raise it: --max-weight, or [secure] max_weight)",
        )


def _over_budget(federation: Federation, round_index: int) -> bool:
    """Whether the next round, with every client taking part, could pass ``max_epsilon``."""
    budget = federation.config.privacy.max_epsilon
    if federation.ledger is None or budget is None:
        return False
    return federation.ledger.epsilon(extra=federation.prospective(round_index)) > budget


def _privacy_note(
    config: RunConfig, ledger: PrivacyLedger | None, *, rounds: int, calibrated: int | None
) -> str | None:
    """One line on the budget: what was spent, against which target (for config.toml)."""
    spent = epsilon_spent(ledger)
    if spent is None:
        return None
    privacy = config.privacy
    note = (
        f"privacy spent: epsilon {spent:.3f} at delta {privacy.delta:g} after {rounds} of "
        f"{config.training.rounds} rounds ({privacy.level.value} level, {privacy.accountant.value})"
    )
    if privacy.epsilon is not None:
        note += f"; target {privacy.epsilon:g}, noise calibrated for {calibrated} rounds"
        if spent > privacy.epsilon * (1 + 1e-9):
            note += f"; OVERSPENT by {spent - privacy.epsilon:.3f}"
    return note


def run_federation(
    config: RunConfig,
    *,
    model: nn.Module | None = None,
    arrays: Any = None,
    resume: bool = False,
    allow_overspend: bool = False,
    on_start: Callable[[RunStart], None] | None = None,
    on_round: Callable[[RoundMetrics], None] | None = None,
    on_calibration: Callable[[int, int], None] | None = None,
    on_progress: Callable[[RoundProgress], None] | None = None,
    workers: int = 1,
) -> RunResult:
    """Run (or resume) a federated training and write its output folder.

    Every check (settings, data, model, output folder, checkpoint, privacy budget) runs before
    anything is written. Then: a checkpoint manifest, ``config.toml`` (resolved, headed by the
    epsilon spent), ``metrics.jsonl`` (a line per round), a checkpoint after every completed
    round, and at the end ``summary.json`` and ``training.png``. A client whose update is not
    finite is left out of its round with a :class:`~fl.errors.NonFiniteUpdateWarning`.

    Args:
        config: the validated run configuration.
        model: train this module instead of the configured reference model.
        arrays: train on these ``(x, y)`` arrays or tensors, or this ``torch.utils.data.Dataset``,
            instead of the configured data set.
        resume: continue the run in ``config.out`` if it holds one (else start it there).
        allow_overspend: let ``training.rounds`` go past the rounds a target epsilon was
            calibrated for, spending more than the target (recorded in config.toml and
            summary.json); without it such a resume is a :class:`~fl.errors.BudgetError`.
        on_start: called once every check has passed, before round 1 (or the next round).
        on_round: called with each round's metrics as it completes.
        on_calibration: ``(done, total)`` progress of the noise calibration before round 1
            (default: a plain line on standard output every few seconds).
        on_progress: called within each round as clients finish training and protocol steps.
        workers: processes for the clients' work: 1 runs every client in this process; more
            start that many worker processes (:mod:`fl.engines.pool`), each training, encoding
            and running the protocol for a share of every cohort; the model is the same bit
            for bit. A cohort too small to share runs on fewer (:func:`~fl.engines.pool.
            worker_count`; the :class:`RunStart` says how many).

    Raises:
        ConfigError, DataError: invalid settings or data, before round 1.
        WorkerError: a worker process failed at a client's work (names the round and the
            client); the run is checkpointed after the last completed round.
        OutputError: the output folder cannot be used (see :func:`fl.core.run_folder.check_output`).
        CheckpointError: the checkpoint to resume does not verify.
        BudgetError: resuming past the calibrated rounds would spend more than the target.
        FLError: resuming with other settings, or fewer rounds than done.

    Example:
        >>> from fl import RunConfig, run_federation
        >>> config = RunConfig().with_overrides({"training.rounds": 2, "out": "/tmp/privagg-doc"})
        >>> result = run_federation(config, resume=True)  # doctest: +SKIP
    """
    started = time.perf_counter()
    # the clients of one secure sum: a round's cohort, or (async) one buffer's session
    per_round = (
        config.async_buffer
        if config.schedule.mode is ScheduleMode.ASYNC
        else config.training.cohort_size
    )
    used = worker_count(workers, per_round)  # validates workers
    reason = None
    if used < workers:
        reason = f"{per_round} clients per round is too few to share further"
    if config.out is None:
        config = dataclasses.replace(config, out=str(new_run_folder()))
    out = Path(config.out)
    existing = check_output(config, resume=resume)
    data = build_federated_data(
        config.data, clients=config.training.clients, seed=config.seed, arrays=arrays
    )
    device = resolve_device(config.device)
    if device.type != "cpu" and used > 1:  # one GPU: its process trains every client
        used, reason = 1, f"training on {device.type} runs in this process"
    torch.manual_seed(config.seed)
    model = (
        model
        if model is not None
        else build_model(config.model, features=data.num_features, classes=data.num_classes)
    )
    if config.privacy.level is PrivacyLevel.SAMPLE:
        from dp.local import make_trainable

        try:
            model = make_trainable(model)
        except DPError as error:
            raise ConfigError("model", type(model).__name__, str(error)) from None
    check_model_fits(model, torch.as_tensor(data.client_arrays(1)[0][:2]), data.num_classes)
    server = FedAvgServer(
        model, server_learning_rate=config.training.server_learning_rate, device=device
    )
    if config.secure.enabled and config.privacy.level in (PrivacyLevel.NONE, PrivacyLevel.SAMPLE):
        _preflight(config, server.global_vector.numel())
    if config.secure.enabled and config.privacy.level is PrivacyLevel.NONE:
        _check_weights(config, data)
    if config.schedule.mode is ScheduleMode.ASYNC:
        from fl.engines.asynchronous import AsyncFederation

        if existing is not None:
            raise FLError(
                f"{out} holds an asynchronous run: clients in flight are not checkpointed, so it "
                "cannot be resumed; start a new run (another --out)"
            )
        engine: type[Federation] = AsyncFederation
    else:
        engine = Federation
    federation = engine(
        config=config, server=server, working=copy.deepcopy(model), data=data, device=device
    )
    privacy = config.privacy
    if existing is not None:
        calibrated = existing.calibrated_rounds
    else:
        targeted = privacy.level is not PrivacyLevel.NONE and privacy.epsilon is not None
        calibrated = config.training.rounds if targeted else None
    # the noise is calibrated once, for the rounds the run started with: the budget contract
    plan_config = (
        config if calibrated is None else config.with_overrides({"training.rounds": calibrated})
    )
    if privacy.level is not PrivacyLevel.NONE:
        federation.ledger = PrivacyLedger(
            level=privacy.level, delta=privacy.delta, accountant=privacy.accountant
        )
    history: list[RoundMetrics] = []
    start, wall_before = 0, 0.0
    if existing is not None:
        start, wall_before = existing.completed_rounds, existing.wall_seconds
        history = list(existing.history)
        _restore(federation, existing, out)
        federation.clock = (history[-1].simulated_time or 0.0) if history else 0.0
    # planned after the restore: the sample-level plan reuses the noisy counts in the ledger
    if privacy.level is PrivacyLevel.SAMPLE:
        federation.sample_plan = plan_sample_level(
            plan_config, data, ledger=federation.ledger, progress=on_calibration
        )
    elif privacy.level is PrivacyLevel.CLIENT:
        federation.client_plan = plan_client_level(
            plan_config, server.global_vector.numel(), progress=on_calibration
        )
    elif privacy.level is PrivacyLevel.CENTRAL:
        federation.central_plan = plan_central(
            plan_config, server.global_vector.numel(), progress=on_calibration
        )
    projected = None
    if (
        federation.ledger is not None
        and calibrated is not None
        and config.training.rounds > calibrated
    ):
        projected = projected_epsilon(
            federation.ledger, federation.prospective, start=start, stop=config.training.rounds
        )
        check_extension(
            config,
            out=out,
            calibrated_rounds=calibrated,
            projected=projected,
            allow_overspend=allow_overspend,
        )
    if existing is not None:
        idle = _nothing_to_do(federation, start)
        previous = read_summary(out)
        if idle is not None and previous is not None and previous.get("rounds") == start:
            return RunResult(
                config=config,
                history=tuple(history),
                model=server.model,
                summary=previous,
                out=out,
                nothing_to_do=idle,
            )
    federation.progress = on_progress
    if used > 1:  # started before anything is written: a model no worker can load fails here
        # a copy of the model goes out: torch moves what it sends into shared memory
        trainer = dataclasses.replace(federation.trainer, model=copy.deepcopy(federation.working))
        federation.pool = WorkerPool(used, trainer=trainer)
    create_output(out)

    def checkpoint(rounds: int) -> None:
        ledger = federation.ledger
        save_checkpoint(
            out,
            Checkpoint(
                completed_rounds=rounds,
                global_vector=server.global_vector if rounds > 0 else None,
                config_toml=config.to_toml(),
                ledger_json=ledger.to_json() if ledger is not None else None,
                history=tuple(history),
                calibrated_rounds=calibrated,
                wall_seconds=round(wall_before + time.perf_counter() - started, 3),
            ),
        )
        note = _privacy_note(config, ledger, rounds=rounds, calibrated=calibrated)
        write_config(out, config, privacy_note=note)
        if ledger is not None and rounds > 0:
            ledger.write(out)

    checkpoint(start)  # ties the folder to this run (and records the new rounds on resume)
    repaired = reconcile_metrics(out, history)
    if repaired is not None and existing is not None and existing.completed_rounds > 0:
        warnings.warn(repaired, stacklevel=2)
    if on_start:
        on_start(
            RunStart(
                config=config,
                out=out,
                completed_rounds=start,
                epsilon_spent=epsilon_spent(federation.ledger),
                epsilon_target=privacy.epsilon if calibrated is not None else None,
                calibrated_rounds=calibrated,
                epsilon_projected=projected,
                workers=used,
                workers_requested=workers,
                workers_reason=reason,
            )
        )
    stopped = None
    try:
        for round_index in range(start, config.training.rounds):
            if _over_budget(federation, round_index):
                stopped = (
                    f"round {round_index + 1} could exceed max_epsilon = {privacy.max_epsilon}"
                )
                break
            metrics = federation.run_round(round_index)
            if metrics.non_finite:
                warnings.warn(
                    f"round {metrics.round}: client(s) {', '.join(map(str, metrics.non_finite))} "
                    "sent an update with NaN or infinite values and were left out of the round "
                    f"(check training.learning_rate = {config.training.learning_rate:g})",
                    NonFiniteUpdateWarning,
                    stacklevel=2,
                )
            history.append(metrics)
            append_metrics(out, metrics)
            checkpoint(round_index + 1)
            if on_round:
                on_round(metrics)
    finally:
        if federation.pool is not None:
            federation.pool.close()
    seconds = wall_before + time.perf_counter() - started
    summary = _summary(config, history, server, device, seconds)
    summary["stopped_early"] = stopped
    summary["workers"] = used
    if federation.ledger is not None:
        summary.update(spent_summary(federation.ledger))
        summary["epsilon_target"] = privacy.epsilon if calibrated is not None else None
        summary["calibrated_rounds"] = calibrated
        summary["delta"] = privacy.delta
        summary["privacy_level"] = privacy.level.value
        summary["accountant"] = privacy.accountant.value
    write_summary(out, summary)
    mode = "secure aggregation" if config.secure.enabled else "in the clear"
    algorithm = config.algorithm.name.value
    if config.schedule.mode is ScheduleMode.ASYNC:
        algorithm += f", async buffer {config.async_buffer}"
    plot = plot_training(
        out, history, title=f"{config.training.clients} clients, {algorithm}, {mode}"
    )
    files = ["config.toml", "metrics.jsonl", "summary.json"]
    files += ["training.png"] if plot is not None else []
    files += ["privacy.json"] if federation.ledger is not None and history else []
    return RunResult(
        config=config,
        history=tuple(history),
        model=server.model,
        summary=summary,
        out=out,
        rounds_run=len(history) - start,
        files=tuple(files),
    )


def _restore(federation: Federation, checkpoint: Checkpoint, out: Path) -> None:
    """Load the checkpoint's model and ledger into the federation."""
    vector = checkpoint.global_vector
    if vector is not None:
        expected = federation.server.global_vector.numel()
        if vector.numel() != expected:
            raise CheckpointError(
                f"the checkpoint in {out} holds a model of {vector.numel()} parameters, but this "
                f"run's model has {expected}: resume with the model the run started with"
            )
        federation.server.load(vector)
    if federation.ledger is None:
        return
    if checkpoint.ledger_json is None:
        if checkpoint.completed_rounds > 0:
            raise CheckpointError(
                f"the checkpoint in {out} has no privacy ledger after "
                f"{checkpoint.completed_rounds} rounds of a DP run; start a new run"
            )
        return
    try:
        federation.ledger = PrivacyLedger.from_json(checkpoint.ledger_json)
    except DPError as error:
        raise CheckpointError(f"the checkpoint in {out}: {error}") from None


def _nothing_to_do(federation: Federation, start: int) -> str | None:
    """Why a resumed run would train no round, if it would not."""
    rounds = federation.config.training.rounds
    if start >= rounds:
        return f"all {rounds} rounds are done; pass --rounds N (above {rounds}) to train more"
    if _over_budget(federation, start):
        budget = federation.config.privacy.max_epsilon
        return (
            f"round {start + 1} could exceed max_epsilon = {budget}; raise --max-epsilon to "
            "continue"
        )
    return None


def _summary(
    config: RunConfig,
    history: list[RoundMetrics],
    server: FedAvgServer,
    device: torch.device,
    seconds: float,
) -> dict:
    final = history[-1] if history else None
    return {
        "final_accuracy": final.accuracy if final else None,
        "final_loss": final.loss if final else None,
        "best_accuracy": max((m.accuracy for m in history), default=None),
        "rounds": len(history),
        "rounds_planned": config.training.rounds,
        "failed_rounds": sum(m.failed for m in history),
        "non_finite_updates": sum(len(m.non_finite) for m in history),
        "clients": config.training.clients,
        "cohort_size": config.training.cohort_size,
        "algorithm": config.algorithm.name.value,
        "mode": config.schedule.mode.value,
        "simulated_seconds": final.simulated_time if final else None,
        "secure_aggregation": config.secure.enabled,
        "parameters": int(server.global_vector.numel()),
        "device": str(device),
        "wall_seconds": round(seconds, 3),
        "secagg_seconds": round(sum(m.secagg_seconds for m in history), 3),
        "train_seconds": round(sum(m.train_seconds for m in history), 3),
        "bytes_up": sum(m.bytes_up or 0 for m in history),
        "bytes_down": sum(m.bytes_down or 0 for m in history),
    }
