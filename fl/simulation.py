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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import secagg
from fl.aggregation import AggregateOutcome, plain_weighted_mean, secure_weighted_mean
from fl.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fl.client import train_locally
from fl.config import Device, RunConfig, parse_toml
from fl.data import FederatedData, build_federated_data
from fl.errors import ConfigError, FLError
from fl.models import build_model, check_model_fits
from fl.report import RoundMetrics, append_metrics, plot_training, read_metrics, write_summary
from fl.server import FedAvgServer, sample_cohort
from secagg.encoding import FixedPointEncoder
from secagg.randomness import DeterministicRandom

__all__ = [
    "RunResult",
    "draw_dropouts",
    "latest_run_folder",
    "new_run_folder",
    "prepare_output",
    "resolve_device",
    "run_federation",
]


@dataclass(frozen=True, eq=False)
class RunResult:
    """A finished (or budget-stopped) run."""

    config: RunConfig
    history: tuple[RoundMetrics, ...]
    model: nn.Module
    summary: dict
    out: Path


def resolve_device(device: Device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a configuration error."""
    if device is Device.CUDA and not torch.cuda.is_available():
        raise ConfigError("device", "cuda", "auto or cpu: no CUDA device is available here")
    if device is Device.CPU or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


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


def _stream_seed(*key: int) -> int:
    """A 63-bit seed for one (seed, round, client) stream."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def new_run_folder(base: str | Path = "runs") -> Path:
    """A fresh folder ``runs/run-YYYYmmdd-HHMMSS`` (suffixed if taken)."""
    stamp = time.strftime("run-%Y%m%d-%H%M%S")
    folder, suffix = Path(base) / stamp, 1
    while folder.exists():
        suffix += 1
        folder = Path(base) / f"{stamp}-{suffix}"
    return folder


def latest_run_folder(base: str | Path = "runs") -> Path | None:
    """The most recently changed folder under ``base`` that holds a checkpoint, if any."""
    candidates = [p.parent for p in Path(base).glob("*/checkpoint.json")]
    return max(candidates, key=lambda p: (p / "checkpoint.json").stat().st_mtime, default=None)


def _differences(a: dict, b: dict, prefix: str = "") -> set[str]:
    """Dotted keys whose values differ between two nested configuration dicts."""
    keys = set(a) | set(b)
    found = set()
    for key in keys:
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            found |= _differences(left, right, f"{prefix}{key}.")
        elif left != right:
            found.add(prefix + key)
    return found


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


def prepare_output(config: RunConfig, *, resume: bool) -> tuple[Path, Checkpoint | None]:
    """Create the output folder and find its checkpoint, refusing to mix two runs in one folder.

    Raises:
        FLError: the folder holds a run and ``resume`` is off, or it holds a run made with other
            settings (only ``training.rounds`` may change on resume).
    """
    if config.out is None:
        raise FLError("config.out is unset; resolve it first (run_federation does)")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    existing = load_checkpoint(out)
    if existing is not None and not resume:
        raise FLError(
            f"{out} already holds a run ({existing.completed_rounds} rounds done); pass --resume to "
            "continue it, or --out to start a new one"
        )
    if existing is not None:
        saved = parse_toml(existing.config_toml, source=str(out / "checkpoint.json"))
        differences = _differences(saved.to_dict(), config.to_dict()) - {"training.rounds", "out"}
        if differences:
            raise FLError(
                f"{out} holds a run made with other settings ({', '.join(sorted(differences))}); "
                "resume with the same settings (only training.rounds may change) or choose another --out"
            )
    return out, existing


def _aggregate(
    config: RunConfig, updates: dict, dropouts: dict, round_index: int
) -> AggregateOutcome:
    if not config.secure.enabled:
        return plain_weighted_mean(updates, dropouts=dropouts)
    secure = config.secure
    return secure_weighted_mean(
        updates,
        max_weight=secure.max_weight,
        clip=secure.clip,
        precision_bits=secure.precision_bits,
        ring_bits=secure.ring_bits,
        threshold=secure.threshold,
        neighbours=secure.neighbours,
        identities=secure.identities,
        dropouts=dropouts,
        round_index=round_index,
        rounding_random=lambda client: DeterministicRandom(
            f"{config.seed}/{round_index}/{client}".encode()
        ),
    )


def run_round(
    config: RunConfig,
    round_index: int,
    server: FedAvgServer,
    working: nn.Module,
    data: FederatedData,
    device: torch.device,
) -> RoundMetrics:
    """One round: sample, train, aggregate, apply, evaluate. ``round_index`` is 0-based."""
    generator = np.random.default_rng([config.seed, round_index])
    cohort = sample_cohort(config.training.clients, config.training.cohort_size, generator)
    dropouts = draw_dropouts(
        cohort, config.secure.dropout, identities=config.secure.identities, generator=generator
    )
    updates, train_seconds = {}, 0.0
    for client in cohort:
        x, y = data.client_arrays(client)
        local = train_locally(
            working,
            server.global_vector,
            x,
            y,
            training=config.training,
            device=device,
            generator=torch.Generator().manual_seed(
                hash((config.seed, round_index, client)) & 0x7FFFFFFF
            ),
        )
        updates[client] = local.update
        train_seconds += local.seconds
    try:
        outcome = _aggregate(config, updates, dropouts, round_index)
    except secagg.ThresholdNotMet:
        accuracy, loss = server.evaluate(data.test_x, data.test_y)
        return RoundMetrics(
            round_index + 1,
            accuracy,
            loss,
            len(cohort),
            len(cohort),
            0,
            0,
            0.0,
            train_seconds,
            failed=True,
        )
    server.apply(outcome.mean)
    accuracy, loss = server.evaluate(data.test_x, data.test_y)
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
    )


def run_federation(
    config: RunConfig,
    *,
    model: nn.Module | None = None,
    arrays: Any = None,
    resume: bool = False,
    on_round: Callable[[RoundMetrics], None] | None = None,
) -> RunResult:
    """Run (or resume) a federated training and write its output folder.

    Writes ``config.toml`` (resolved), ``metrics.jsonl`` (a line per round), a checkpoint after
    every completed round, and at the end ``summary.json`` and ``training.png``.

    Args:
        config: the validated run configuration.
        model: train this module instead of the configured reference model.
        arrays: train on these ``(x, y)`` arrays or tensors, or this ``torch.utils.data.Dataset``,
            instead of the configured data set.
        resume: continue from the checkpoint in ``config.out``.
        on_round: called with each round's metrics as it completes.

    Raises:
        ConfigError, DataError: invalid settings or data, before round 1.
        FLError: the output folder holds another run.

    Example:
        >>> from fl import RunConfig, run_federation
        >>> config = RunConfig().with_overrides({"training.rounds": 2, "out": "/tmp/privagg-doc"})
        >>> result = run_federation(config, resume=True)  # doctest: +SKIP
    """
    started = time.perf_counter()
    if config.out is None:
        config = dataclasses.replace(config, out=str(new_run_folder()))
    out, existing = prepare_output(config, resume=resume)
    (out / "config.toml").write_text(config.to_toml())
    data = build_federated_data(
        config.data, clients=config.training.clients, seed=config.seed, arrays=arrays
    )
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = (
        model
        if model is not None
        else build_model(config.model, features=data.num_features, classes=data.num_classes)
    )
    check_model_fits(model, torch.as_tensor(data.train_x[:2]), data.num_classes)
    server = FedAvgServer(
        model, server_learning_rate=config.training.server_learning_rate, device=device
    )
    if config.secure.enabled:
        _preflight(config, server.global_vector.numel())
    history: list[RoundMetrics] = []
    start = 0
    if existing is not None:
        server.load(existing.global_vector)
        start = existing.completed_rounds
        history = read_metrics(out, up_to_round=start)
    else:
        (out / "metrics.jsonl").write_text("")
    working = copy.deepcopy(model)
    for round_index in range(start, config.training.rounds):
        metrics = run_round(config, round_index, server, working, data, device)
        history.append(metrics)
        append_metrics(out, metrics)
        save_checkpoint(out, Checkpoint(round_index + 1, server.global_vector, config.to_toml()))
        if on_round:
            on_round(metrics)
    summary = _summary(config, history, server, device, time.perf_counter() - started)
    write_summary(out, summary)
    mode = "secure aggregation" if config.secure.enabled else "plaintext FedAvg"
    plot_training(out, history, title=f"{config.training.clients} clients, {mode}")
    return RunResult(
        config=config, history=tuple(history), model=server.model, summary=summary, out=out
    )


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
        "failed_rounds": sum(m.failed for m in history),
        "clients": config.training.clients,
        "cohort_size": config.training.cohort_size,
        "secure_aggregation": config.secure.enabled,
        "parameters": int(server.global_vector.numel()),
        "device": str(device),
        "wall_seconds": round(seconds, 3),
        "secagg_seconds": round(sum(m.secagg_seconds for m in history), 3),
        "train_seconds": round(sum(m.train_seconds for m in history), 3),
        "bytes_up": sum(m.bytes_up for m in history),
        "bytes_down": sum(m.bytes_down for m in history),
    }
