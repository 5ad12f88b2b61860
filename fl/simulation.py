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

import torch
from torch import nn

import secagg
from dp.errors import DPError
from dp.ledger import PrivacyLedger, PrivacyLevel
from fl.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fl.config import Device, RunConfig, parse_toml
from fl.data import build_federated_data
from fl.errors import ConfigError, FLError
from fl.models import build_model, check_model_fits
from fl.privacy import plan_client_level, plan_sample_level, spent_summary
from fl.report import RoundMetrics, append_metrics, plot_training, read_metrics, write_summary
from fl.rounds import Federation
from fl.server import FedAvgServer
from secagg.encoding import FixedPointEncoder

__all__ = [
    "RunResult",
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


_RESUMABLE = {"training.rounds", "privacy.max_epsilon", "out"}


def prepare_output(config: RunConfig, *, resume: bool) -> tuple[Path, Checkpoint | None]:
    """Create the output folder and find its checkpoint, refusing to mix two runs in one folder.

    Raises:
        FLError: the folder holds a run and ``resume`` is off, or it holds a run made with other
            settings (only ``training.rounds`` and ``privacy.max_epsilon`` may change on resume).
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
        differences = _differences(saved.to_dict(), config.to_dict()) - _RESUMABLE
        if differences:
            raise FLError(
                f"{out} holds a run made with other settings ({', '.join(sorted(differences))}); "
                "resume with the same settings (only training.rounds and privacy.max_epsilon may change) or choose another --out"
            )
    return out, existing


def _over_budget(federation: Federation, round_index: int) -> bool:
    """Whether the next round, with every client taking part, could pass ``max_epsilon``."""
    budget = federation.config.privacy.max_epsilon
    if federation.ledger is None or budget is None:
        return False
    return federation.ledger.epsilon(extra=federation.prospective(round_index)) > budget


def run_federation(
    config: RunConfig,
    *,
    model: nn.Module | None = None,
    arrays: Any = None,
    resume: bool = False,
    on_round: Callable[[RoundMetrics], None] | None = None,
    on_calibration: Callable[[int, int], None] | None = None,
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
        on_calibration: ``(done, total)`` progress of the noise calibration before round 1
            (default: a plain line on standard output every few seconds).

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
    if config.privacy.level is PrivacyLevel.SAMPLE:
        from dp.local import make_trainable

        try:
            model = make_trainable(model)
        except DPError as error:
            raise ConfigError("model", type(model).__name__, str(error)) from None
    check_model_fits(model, torch.as_tensor(data.train_x[:2]), data.num_classes)
    server = FedAvgServer(
        model, server_learning_rate=config.training.server_learning_rate, device=device
    )
    if config.secure.enabled and config.privacy.level is not PrivacyLevel.CLIENT:
        _preflight(config, server.global_vector.numel())
    federation = Federation(
        config=config, server=server, working=copy.deepcopy(model), data=data, device=device
    )
    if config.privacy.level is not PrivacyLevel.NONE:
        federation.ledger = (
            PrivacyLedger.from_json(existing.ledger_json)
            if existing is not None and existing.ledger_json
            else PrivacyLedger(
                level=config.privacy.level,
                delta=config.privacy.delta,
                accountant=config.privacy.accountant,
            )
        )
    if config.privacy.level is PrivacyLevel.SAMPLE:
        federation.sample_plan = plan_sample_level(
            config, data, ledger=federation.ledger, progress=on_calibration
        )
    elif config.privacy.level is PrivacyLevel.CLIENT:
        federation.client_plan = plan_client_level(
            config, server.global_vector.numel(), progress=on_calibration
        )
    history: list[RoundMetrics] = []
    start = 0
    if existing is not None:
        server.load(existing.global_vector)
        start = existing.completed_rounds
        history = read_metrics(out, up_to_round=start)
    else:
        (out / "metrics.jsonl").write_text("")
    stopped = None
    for round_index in range(start, config.training.rounds):
        if _over_budget(federation, round_index):
            stopped = (
                f"round {round_index + 1} could exceed max_epsilon = {config.privacy.max_epsilon}"
            )
            break
        metrics = federation.run_round(round_index)
        history.append(metrics)
        append_metrics(out, metrics)
        ledger_json = federation.ledger.to_json() if federation.ledger is not None else None
        save_checkpoint(
            out, Checkpoint(round_index + 1, server.global_vector, config.to_toml(), ledger_json)
        )
        if federation.ledger is not None:
            federation.ledger.write(out)
        if on_round:
            on_round(metrics)
    summary = _summary(config, history, server, device, time.perf_counter() - started)
    summary["stopped_early"] = stopped
    if federation.ledger is not None:
        summary.update(spent_summary(federation.ledger))
        summary["delta"] = config.privacy.delta
        summary["privacy_level"] = config.privacy.level.value
        summary["accountant"] = config.privacy.accountant.value
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
