"""A run's output folder: found, checked before anything is written, then created.

Rules: a new run never writes into a folder holding files it would overwrite (it did not
create them); a resumed run continues only a run whose checkpoint verifies, with the settings it
started with (only ``training.rounds`` and ``privacy.max_epsilon`` may change, and rounds never
go backwards); every problem is an :class:`~fl.errors.FLError` naming the folder or file and
the fix, raised before any file is touched.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from fl.core.checkpoint import MANIFEST_FILE, Checkpoint, load_checkpoint
from fl.core.config import RunConfig, parse_toml
from fl.core.report import METRICS_FILE, SUMMARY_FILE, atomic_write
from fl.errors import CheckpointError, ConfigError, FLError, OutputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "CONFIG_FILE",
    "RESUMABLE",
    "RUN_FILES",
    "check_output",
    "create_output",
    "latest_run_folder",
    "new_run_folder",
    "resume_config",
    "write_config",
]

CONFIG_FILE = "config.toml"
RUN_FILES = (
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    "training.png",
    "privacy.json",
    MANIFEST_FILE,
    "checkpoints",
)
"""Every name a run writes in its folder."""

RESUMABLE = frozenset({"training.rounds", "privacy.max_epsilon", "out"})
"""The settings a resumed run may change."""


def new_run_folder(base: str | Path = "runs") -> Path:
    """A fresh folder ``runs/run-YYYYmmdd-HHMMSS`` (suffixed if taken)."""
    stamp = time.strftime("run-%Y%m%d-%H%M%S")
    folder, suffix = Path(base) / stamp, 1
    while folder.exists():
        suffix += 1
        folder = Path(base) / f"{stamp}-{suffix}"
    return folder


def latest_run_folder(base: str | Path = "runs") -> Path | None:
    """The most recently checkpointed folder under ``base``, if any."""
    candidates = [p.parent for p in Path(base).glob(f"*/{MANIFEST_FILE}")]
    return max(candidates, key=lambda p: (p / MANIFEST_FILE).stat().st_mtime, default=None)


def _differences(a: dict, b: dict, prefix: str = "") -> set[str]:
    """Dotted keys whose values differ between two nested configuration dicts."""
    found = set()
    for key in set(a) | set(b):
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            found |= _differences(left, right, f"{prefix}{key}.")
        elif left != right:
            found.add(prefix + key)
    return found


def _value(values: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(values, dict):
            return None
        values = values.get(part)
    return values


def _saved_config(folder: Path, checkpoint: Checkpoint) -> RunConfig:
    source = f"{folder / 'checkpoints'}/round-{checkpoint.completed_rounds}.json"
    try:
        return parse_toml(checkpoint.config_toml, source=source)
    except ConfigError as error:
        raise CheckpointError(
            f"the checkpoint in {folder} holds settings this privagg cannot use ({error}); "
            "resume it with the privagg version that wrote it, or start a new run"
        ) from None


def _require_run(folder: Path) -> Checkpoint:
    if not folder.exists():
        raise OutputError(
            f"--out {folder} does not exist, so there is no run to resume there; start one "
            "without --resume"
        )
    if not folder.is_dir():
        raise OutputError(f"--out {folder} is a file, not a run folder; pass a run's folder")
    checkpoint = load_checkpoint(folder)
    if checkpoint is None:
        raise OutputError(
            f"{folder} holds no privagg run to resume (no {MANIFEST_FILE}); start a new run "
            "without --resume, in an empty or new folder"
        )
    return checkpoint


def resume_config(folder: Path, overrides: dict[str, Any]) -> RunConfig:
    """The configuration of the run in ``folder`` (from its verified checkpoint, not from the
    editable ``config.toml``), with ``overrides`` applied.

    Raises:
        OutputError: no run there. CheckpointError: its checkpoint does not verify.
        ConfigError: an override is invalid.
    """
    checkpoint = _require_run(folder)
    saved = _saved_config(folder, checkpoint)
    return saved.with_overrides({**overrides, "out": str(folder)})


def _writable_ancestor(folder: Path) -> None:
    ancestor = folder.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(
            f"--out {folder} cannot be created: {ancestor} is a file; choose a folder path"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(
            f"--out {folder} cannot be written: no permission to write in {ancestor}; choose a "
            "folder you can write to"
        )


def _check_resumed(folder: Path, config: RunConfig, checkpoint: Checkpoint) -> None:
    saved = _saved_config(folder, checkpoint).to_dict()
    current = config.to_dict()
    differences = _differences(saved, current) - RESUMABLE
    if differences:
        changed = ", ".join(
            f"{key} {_value(saved, key)!r} -> {_value(current, key)!r}"
            for key in sorted(differences)
        )
        raise FLError(
            f"{folder} holds a run made with other settings ({changed}); a run's settings are "
            "fixed when it starts (only --rounds and --max-epsilon may change on resume): drop "
            "those flags, or start a new run with another --out"
        )
    done, rounds = checkpoint.completed_rounds, config.training.rounds
    if rounds < done:
        raise FLError(
            f"--rounds {rounds} is below the {done} rounds {folder} has completed; a run cannot "
            f"be shortened: resume with --rounds {done} or more (or without --rounds)"
        )
    toml_path = folder / CONFIG_FILE
    try:
        edited = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return  # missing or damaged: rewritten from the checkpoint when the run resumes
    edits = _differences(saved, edited) - RESUMABLE
    if edits:
        raise FLError(
            f"{toml_path} was edited (changed from the run's checkpoint: "
            f"{', '.join(sorted(edits))}), but a run's settings are fixed when it starts: undo "
            f"the edit, or start a new run with --config {toml_path} --out NEW_FOLDER"
        )


def check_output(config: RunConfig, *, resume: bool) -> Checkpoint | None:
    """Check ``config.out`` for a new or resumed run, reading only; return its checkpoint.

    With ``resume``, a folder holding no run is checked as for a new run (the run starts), so a
    script can always pass ``resume=True``; the CLI's ``--resume`` insists on a run
    (:func:`resume_config`).

    Raises:
        OutputError: not a folder, not writable, holding files a new run would overwrite, or
            holding no run to resume.
        CheckpointError: the checkpoint to resume does not verify.
        FLError: a resumed run with changed settings, fewer rounds, or an edited config.toml.
    """
    if config.out is None:
        raise OutputError("config.out is unset; choose an output folder (--out)")
    folder = Path(config.out)
    if resume and (folder / MANIFEST_FILE).exists():
        checkpoint = _require_run(folder)
        _check_resumed(folder, config, checkpoint)
        _writable_ancestor(folder)
        return checkpoint
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--out {folder} is a file, not a folder; choose a folder path")
    if folder.is_dir():
        try:
            existing = load_checkpoint(folder)
        except CheckpointError:
            existing = None
            clash = True
        else:
            clash = False
        if existing is not None or clash:
            done = f"{existing.completed_rounds} rounds done" if existing else "damaged checkpoint"
            raise OutputError(
                f"{folder} already holds a run ({done}); pass --resume to continue it, or "
                "--out to start a new one"
            )
        taken = [name for name in RUN_FILES if (folder / name).exists()]
        if taken:
            raise OutputError(
                f"{folder} already holds {', '.join(taken)}, which this run did not write and "
                "would overwrite; choose a new or empty folder with --out"
            )
    _writable_ancestor(folder)
    return None


def create_output(folder: Path) -> None:
    """Create the output folder (after :func:`check_output`).

    Raises:
        OutputError: the folder cannot be created.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"--out {folder} cannot be created ({error.strerror}); choose a folder you can write to"
        ) from None


def write_config(folder: Path, config: RunConfig, *, privacy_note: str | None) -> None:
    """Write ``config.toml``: the resolved settings, headed by what the run has spent."""
    header = "# privagg run settings; start a new run with them: privagg run --config FILE\n"
    if privacy_note:
        header += f"# {privacy_note}\n"
    atomic_write(folder / CONFIG_FILE, (header + "\n" + config.to_toml()).encode())
