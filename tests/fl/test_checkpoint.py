"""Checkpoints that cannot mismatch: one manifest, written last, names each file by its SHA-256;
a crash at any write leaves a checkpoint that loads; anything else is refused by name."""

import json

import pytest
import torch

import fl.core.checkpoint
from fl.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fl.core.report import RoundMetrics
from fl.errors import CheckpointError


def _metrics(round_number):
    return RoundMetrics(round_number, 0.5, float("nan"), 5, 1, 100, 10, 0.1, 0.2)


def _checkpoint(rounds, value=1.0):
    return Checkpoint(
        completed_rounds=rounds,
        global_vector=torch.full((4,), value),
        config_toml="seed = 0\n",
        ledger_json=None,
        history=tuple(_metrics(r) for r in range(1, rounds + 1)),
        calibrated_rounds=3,
        wall_seconds=1.5,
    )


def test_round_trip_keeps_every_field(tmp_path):
    """What is saved loads back: model, config, history (a NaN loss included), budget, time."""
    save_checkpoint(tmp_path, _checkpoint(2))
    loaded = load_checkpoint(tmp_path)
    assert loaded.completed_rounds == 2 and torch.equal(loaded.global_vector, torch.ones(4))
    assert loaded.calibrated_rounds == 3 and loaded.wall_seconds == 1.5
    assert [m.round for m in loaded.history] == [1, 2]
    assert loaded.history[0].accuracy == 0.5
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "round-2.json",
        "round-2.npz",
    ]


@pytest.mark.parametrize("crash_after", [0, 1, 2])
def test_a_crash_between_writes_leaves_the_previous_checkpoint(tmp_path, monkeypatch, crash_after):
    """Killed after any of the writes of round 3 (model, state, before the manifest), the
    folder still loads round 2, intact: the manifest is written last."""
    save_checkpoint(tmp_path, _checkpoint(2))
    real_write = fl.core.checkpoint.atomic_write
    calls = []

    def crashing(path, data):
        if len(calls) == crash_after:
            raise KeyboardInterrupt("killed")
        calls.append(path)
        real_write(path, data)

    monkeypatch.setattr(fl.core.checkpoint, "atomic_write", crashing)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, _checkpoint(3, value=2.0))
    monkeypatch.undo()
    loaded = load_checkpoint(tmp_path)
    assert loaded.completed_rounds == 2 and torch.equal(loaded.global_vector, torch.ones(4))


def test_a_model_from_another_round_is_refused_by_name(tmp_path):
    """A round-5 model copied beside a round-2 manifest (nothing tied the two files before)
    is refused, naming the file."""
    other = tmp_path / "other"
    other.mkdir()
    save_checkpoint(other, _checkpoint(5, value=9.0))
    save_checkpoint(tmp_path, _checkpoint(2))
    (tmp_path / "checkpoints" / "round-2.npz").write_bytes(
        (other / "checkpoints" / "round-5.npz").read_bytes()
    )
    with pytest.raises(CheckpointError, match=r"round-2\.npz does not match checkpoint\.json"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "files",
    [
        {"../escape.json": "0" * 64},
        {"checkpoints/round-2.json": "0" * 64},
        {"checkpoints/round-2.json": "not a hash", "checkpoints/round-2.npz": "0" * 64},
    ],
)
def test_a_manifest_naming_other_files_is_refused(tmp_path, files):
    """The manifest may name only this round's two files, each with a SHA-256."""
    save_checkpoint(tmp_path, _checkpoint(2))
    manifest = json.loads((tmp_path / "checkpoint.json").read_text())
    manifest["files"] = files
    (tmp_path / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="does not list the files of round 2"):
        load_checkpoint(tmp_path)


def test_round_zero_marks_a_started_run(tmp_path):
    """A run that started but completed no round has a loadable round-0 checkpoint, no model."""
    save_checkpoint(tmp_path, Checkpoint(0, None, "seed = 0\n"))
    loaded = load_checkpoint(tmp_path)
    assert loaded.completed_rounds == 0 and loaded.global_vector is None
    assert load_checkpoint(tmp_path / "nothing-here") is None
