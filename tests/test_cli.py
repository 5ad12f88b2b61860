"""The privagg command line: the demo runs and reports a correct sum; bad flags fail clearly."""

import subprocess
import sys

import pytest

from fl.cli import main


def test_aggregate_demo_reports_a_correct_sum(capsys):
    """`privagg aggregate` with small arguments prints each phase and a verified sum."""
    status = main(
        ["aggregate", "--clients", "12", "--dim", "500", "--dropout", "0.25", "--seed", "1"]
    )
    out = capsys.readouterr().out
    assert status == 0
    for phase in ("advertise-keys", "share-keys", "masked-input", "consistency-check", "unmask"):
        assert phase in out
    assert "equals the plaintext sum of the contributors' inputs: yes" in out
    assert "contributors: 9 of 12" in out


def test_too_many_dropouts_fail_without_a_traceback(capsys):
    """Beyond the threshold the round fails with an explanation and exit status 1."""
    status = main(
        [
            "aggregate",
            "--clients",
            "6",
            "--dim",
            "10",
            "--dropout",
            "0.6",
            "--dropout-phase",
            "share-keys",
        ]
    )
    out = capsys.readouterr().out
    assert status == 1
    assert "round failed" in out and "threshold" in out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dropout", "1.5"], "must lie in [0, 1)"),
        (["--clients", "0"], "positive integer"),
        (["--dropout-phase", "later"], "invalid choice"),
    ],
)
def test_bad_flags_are_refused_by_the_parser(flags, message, capsys):
    """argparse rejects invalid values with exit status 2 and names the problem."""
    with pytest.raises(SystemExit) as exit_info:
        main(["aggregate", *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_protocol_parameters_are_reported(capsys):
    """Parameters the protocol cannot use are reported with the fix, exit status 2."""
    status = main(["aggregate", "--clients", "5", "--dim", "4", "--threshold", "9"])
    assert status == 2
    assert "threshold must lie in" in capsys.readouterr().out


def test_console_script_help():
    """The installed entry point answers --help."""
    completed = subprocess.run(
        [sys.executable, "-m", "fl.cli", "aggregate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--dropout-phase" in completed.stdout


def test_run_writes_the_four_output_files(tmp_path, capsys):
    """`privagg run` with small arguments prints the per-round table and writes its outputs."""
    out = tmp_path / "run"
    status = main(["run", "--clients", "5", "--rounds", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0
    assert "round  accuracy" in printed and "final test accuracy" in printed
    for name in ("config.toml", "metrics.jsonl", "summary.json", "training.png"):
        assert (out / name).is_file()


def test_run_resume_continues_the_same_folder(tmp_path, capsys):
    """--resume with more rounds continues where the run stopped."""
    out = tmp_path / "run"
    assert main(["run", "--clients", "5", "--rounds", "1", "--out", str(out)]) == 0
    assert main(["run", "--rounds", "2", "--resume", "--out", str(out)]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rounds", "-1"], "training.rounds = -1 is invalid"),
        (["--fraction", "1.5"], "training.fraction = 1.5 is invalid"),
        (["--config", "missing.toml"], "an existing TOML file"),
        (["--clients", "3", "--alpha", "0"], "data.alpha = 0.0 is invalid"),
    ],
)
def test_run_bad_values_fail_before_training(flags, message, capsys, tmp_path):
    """Invalid settings: exit status 2, the key and value named, no traceback."""
    status = main(["run", *flags, "--out", str(tmp_path / "x")])
    printed = capsys.readouterr().out
    assert status == 2
    assert message in " ".join(printed.split())
    assert "Traceback" not in printed


def test_run_unknown_model_is_refused_by_the_parser(capsys):
    """Enumerated flags list the allowed values."""
    with pytest.raises(SystemExit):
        main(["run", "--model", "rnn"])
    assert "choose from 'mlp', 'cnn'" in capsys.readouterr().err


@pytest.mark.parametrize("level", ["sample", "client"])
def test_run_with_dp_reports_epsilon_per_round(level, tmp_path, capsys):
    """`privagg run --dp LEVEL --epsilon 2` prints an epsilon column and writes privacy.json."""
    out = tmp_path / level
    status = main(
        [
            "run",
            "--clients",
            "5",
            "--rounds",
            "2",
            "--dp",
            level,
            "--epsilon",
            "2",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert "epsilon" in printed.splitlines()[1]
    assert f"{level}-level" in printed and (out / "privacy.json").is_file()


def test_run_with_bad_privacy_values(tmp_path, capsys):
    """Epsilon <= 0 or a clip <= 0 fail before training with the key named."""
    assert main(["run", "--dp", "sample", "--epsilon", "0", "--out", str(tmp_path / "a")]) == 2
    assert "privacy.epsilon" in capsys.readouterr().out
    assert (
        main(
            [
                "run",
                "--dp",
                "sample",
                "--epsilon",
                "1",
                "--clip",
                "-1",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 2
    )
    assert "privacy.clip" in capsys.readouterr().out


def test_sweep_command_prints_the_table(tmp_path, capsys):
    """`privagg sweep` over one epsilon writes its files and prints the accuracy table."""
    out = tmp_path / "sweep"
    status = main(
        [
            "sweep",
            "--epsilons",
            "4",
            "--seeds",
            "1",
            "--rounds",
            "1",
            "--clients",
            "5",
            "--jobs",
            "1",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert "Accuracy against epsilon" in printed and "inf (no DP)" in printed
    assert (out / "accuracy_vs_epsilon.png").is_file()


def test_audit_command_writes_the_report(tmp_path, capsys):
    """`privagg audit` writes audit.md and audit.json with parameters and the audit's bound."""
    import json

    status = main(["audit", "--no-tests", "--out", str(tmp_path / "audit")])
    assert status == 0
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert report["secure_aggregation"]["threshold"] == 6
    assert report["empirical_audit"]["lower_bound"] >= 0
    assert "Empirical privacy audit" in (tmp_path / "audit" / "audit.md").read_text()
