"""Checkpoints: the global model after each completed round, written atomically, never pickled."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fl.errors import FLError

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint"]

_MODEL_FILE = "checkpoint.npz"
_META_FILE = "checkpoint.json"


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """The state after ``completed_rounds`` rounds."""

    completed_rounds: int
    global_vector: torch.Tensor
    config_toml: str
    ledger_json: str | None = None


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def save_checkpoint(folder: Path, checkpoint: Checkpoint) -> None:
    """Write the model, then the metadata that points to it; each file replaced atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, global_vector=checkpoint.global_vector.numpy())
    _atomic_write(folder / _MODEL_FILE, buffer.getvalue())
    meta = {
        "completed_rounds": checkpoint.completed_rounds,
        "config": checkpoint.config_toml,
        "ledger": checkpoint.ledger_json,
    }
    _atomic_write(folder / _META_FILE, json.dumps(meta).encode())


def load_checkpoint(folder: Path) -> Checkpoint | None:
    """The checkpoint in ``folder``, or None if there is none.

    Raises:
        FLError: a checkpoint exists but cannot be read.
    """
    meta_path = folder / _META_FILE
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        with np.load(folder / _MODEL_FILE, allow_pickle=False) as archive:
            vector = torch.from_numpy(archive["global_vector"].copy())
        return Checkpoint(
            int(meta["completed_rounds"]), vector, str(meta["config"]), meta.get("ledger")
        )
    except (OSError, ValueError, KeyError) as error:
        raise FLError(
            f"the checkpoint in {folder} cannot be read ({error}); start a new run"
        ) from None
