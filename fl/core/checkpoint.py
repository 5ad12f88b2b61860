"""Checkpoints that cannot mismatch: the state after each completed round, tied together by one
manifest written last.

A checkpoint of round r is two files under ``checkpoints/``: ``round-<r>.npz`` (the global
model, a plain array, never pickled) and ``round-<r>.json`` (the run's configuration, privacy
ledger, metrics history and budget). Then ``checkpoint.json``, the manifest, names both with
their SHA-256 and is replaced atomically; only after that are the files of older rounds
removed. A crash at any moment therefore leaves a manifest whose files exist and match it. On
load, a missing file, a hash that differs, or content that disagrees with the manifest is a
:class:`~fl.errors.CheckpointError` naming the file: such a checkpoint is never resumed.

A new run writes a round-0 checkpoint (no model yet) before anything else, so every folder
holding a privagg run is recognisable by its manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fl.core.report import RoundMetrics, atomic_write
from fl.errors import CheckpointError

__all__ = ["MANIFEST_FILE", "Checkpoint", "load_checkpoint", "save_checkpoint"]

MANIFEST_FILE = "checkpoint.json"
_FOLDER = "checkpoints"
_FORMAT = "privagg-checkpoint/2"
_NAME = re.compile(r"round-(\d+)\.(npz|json)")
_FIX = "restore it from a backup, or start a new run with another --out"


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """The state of a run after ``completed_rounds`` rounds.

    Attributes:
        completed_rounds: rounds done (0: the run has started, no round has completed).
        global_vector: the global model as a flat float32 vector (None at round 0).
        config_toml: the run's configuration.
        ledger_json: the privacy ledger (None without DP).
        history: the metrics of rounds 1..completed_rounds (what ``metrics.jsonl`` must hold).
        calibrated_rounds: the rounds the DP noise was calibrated for (the budget contract);
            None without a target epsilon.
        wall_seconds: wall time the run has taken so far, over all sessions.
    """

    completed_rounds: int
    global_vector: torch.Tensor | None
    config_toml: str
    ledger_json: str | None = None
    history: tuple[RoundMetrics, ...] = field(default=())
    calibrated_rounds: int | None = None
    wall_seconds: float = 0.0


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(folder: Path, checkpoint: Checkpoint) -> None:
    """Write the round's files, then the manifest naming them, then remove older rounds' files.

    Each write replaces its file atomically (see :func:`fl.core.report.atomic_write`).
    """
    rounds = checkpoint.completed_rounds
    store = folder / _FOLDER
    store.mkdir(exist_ok=True)
    state = {
        "round": rounds,
        "config": checkpoint.config_toml,
        "ledger": checkpoint.ledger_json,
        "history": [m.to_dict() for m in checkpoint.history],
        "calibrated_rounds": checkpoint.calibrated_rounds,
        "wall_seconds": checkpoint.wall_seconds,
    }
    files = {f"{_FOLDER}/round-{rounds}.json": json.dumps(state, allow_nan=False).encode()}
    if checkpoint.global_vector is not None:
        buffer = io.BytesIO()
        np.savez(buffer, global_vector=checkpoint.global_vector.detach().cpu().numpy())
        files[f"{_FOLDER}/round-{rounds}.npz"] = buffer.getvalue()
    for name, data in files.items():
        atomic_write(folder / name, data)
    manifest = {
        "format": _FORMAT,
        "round": rounds,
        "files": {name: _sha256(data) for name, data in files.items()},
    }
    atomic_write(folder / MANIFEST_FILE, (json.dumps(manifest, indent=1) + "\n").encode())
    for path in store.iterdir():
        if _NAME.fullmatch(path.name) and f"{_FOLDER}/{path.name}" not in files:
            path.unlink()


def _damaged(folder: Path, name: str, problem: str) -> CheckpointError:
    return CheckpointError(
        f"the checkpoint in {folder} cannot be resumed: {folder / name} {problem}; {_FIX}"
    )


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise _damaged(folder, MANIFEST_FILE, f"is not readable JSON ({error})") from None
    if isinstance(manifest, dict) and "completed_rounds" in manifest and "format" not in manifest:
        raise CheckpointError(
            f"{path} was written by an older privagg, whose checkpoints carry no manifest and "
            "cannot be checked; start a new run with another --out"
        )
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise _damaged(
            folder,
            MANIFEST_FILE,
            f"is not a privagg checkpoint manifest (expected a JSON object with format "
            f'"{_FORMAT}", round and files, got {json.dumps(manifest)[:60]})',
        )
    rounds, files = manifest.get("round"), manifest.get("files")
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 0:
        raise _damaged(folder, MANIFEST_FILE, f"names no valid round ({rounds!r})")
    expected = {f"{_FOLDER}/round-{rounds}.json"} | (
        {f"{_FOLDER}/round-{rounds}.npz"} if rounds > 0 else set()
    )
    if (
        not isinstance(files, dict)
        or set(files) != expected
        or not all(isinstance(h, str) and re.fullmatch(r"[0-9a-f]{64}", h) for h in files.values())
    ):
        raise _damaged(
            folder,
            MANIFEST_FILE,
            f"does not list the files of round {rounds} with their SHA-256 "
            f"({', '.join(sorted(expected))})",
        )
    return manifest


def _verified(folder: Path, name: str, digest: str) -> bytes:
    try:
        data = (folder / name).read_bytes()
    except FileNotFoundError:
        raise _damaged(folder, name, f"is missing (named by {MANIFEST_FILE})") from None
    except OSError as error:
        raise _damaged(folder, name, f"cannot be read ({error.strerror})") from None
    if _sha256(data) != digest:
        raise _damaged(
            folder,
            name,
            f"does not match {MANIFEST_FILE} (SHA-256 differs: the file was changed, damaged, "
            "or comes from another round)",
        )
    return data


def _parse_state(folder: Path, name: str, data: bytes, rounds: int) -> dict:
    try:
        state = json.loads(data)
    except (UnicodeDecodeError, ValueError) as error:
        raise _damaged(folder, name, f"is not valid JSON ({error})") from None
    checks = (
        (isinstance(state, dict), "a JSON object"),
        (isinstance(state, dict) and state.get("round") == rounds, f"round {rounds}"),
        (isinstance(state, dict) and isinstance(state.get("config"), str), "the configuration"),
        (isinstance(state, dict) and isinstance(state.get("history"), list), "the history"),
    )
    for ok, what in checks:
        if not ok:
            raise _damaged(folder, name, f"does not hold {what} the manifest expects")
    if len(state["history"]) != rounds:
        raise _damaged(
            folder, name, f"holds {len(state['history'])} rounds of metrics, not {rounds}"
        )
    return state


def load_checkpoint(folder: Path) -> Checkpoint | None:
    """The checkpoint in ``folder``, verified against its manifest; None if there is none.

    Raises:
        CheckpointError: the manifest or a file it names is missing, damaged or does not match;
            the message names the file.
    """
    if not (folder / MANIFEST_FILE).exists():
        return None
    manifest = _read_manifest(folder)
    rounds = manifest["round"]
    data = {name: _verified(folder, name, digest) for name, digest in manifest["files"].items()}
    state_name = f"{_FOLDER}/round-{rounds}.json"
    state = _parse_state(folder, state_name, data[state_name], rounds)
    try:
        history = tuple(RoundMetrics.from_dict(m) for m in state["history"])
        calibrated = state.get("calibrated_rounds")
        if calibrated is not None and (not isinstance(calibrated, int) or calibrated < 1):
            raise ValueError(f"calibrated_rounds = {calibrated!r}")
        wall_seconds = float(state.get("wall_seconds", 0.0))
        ledger = state.get("ledger")
        if ledger is not None and not isinstance(ledger, str):
            raise ValueError("the ledger is not a JSON text")
    except (TypeError, ValueError) as error:
        raise _damaged(folder, state_name, f"holds an invalid value ({error})") from None
    vector = None
    if rounds > 0:
        model_name = f"{_FOLDER}/round-{rounds}.npz"
        try:
            with np.load(io.BytesIO(data[model_name]), allow_pickle=False) as archive:
                array = archive["global_vector"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise _damaged(folder, model_name, f"is not a model archive ({error})") from None
        if array.ndim != 1 or array.dtype != np.float32:
            raise _damaged(
                folder, model_name, f"holds a {array.dtype} array of shape {array.shape}"
            )
        vector = torch.from_numpy(array.copy())
    return Checkpoint(
        completed_rounds=rounds,
        global_vector=vector,
        config_toml=state["config"],
        ledger_json=ledger,
        history=history,
        calibrated_rounds=calibrated,
        wall_seconds=wall_seconds,
    )
