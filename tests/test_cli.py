"""The privagg command line: the jobs run and report; every mistake a user can type, and every
damaged file on disk, ends in one line naming the problem and the fix, exit status 2, and no file
touched."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fl.cli import build_parser, main
from fl.core.config import RunConfig
from fl.engines.inprocess import run_federation

SMALL = ["--clients", "6", "--rounds", "2"]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with the SHA-256 of its content."""
    return {
        str(path.relative_to(root)): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        )
        for path in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """Two finished runs (1 and 2 rounds, 6 clients) to copy into each case."""
    root = tmp_path_factory.mktemp("finished")
    assert (
        main(["run", "--quiet", "--clients", "6", "--rounds", "1", "--out", str(root / "one")]) == 0
    )
    assert main(["run", "--quiet", *SMALL, "--out", str(root / "two")]) == 0
    return root


# ---------------------------------------------------------------- the table of mistakes


def _toml(text):
    def setup(tmp, _runs):
        (tmp / "c.toml").write_text(text)
        return ["run", "--config", str(tmp / "c.toml"), "--out", str(tmp / "out")]

    return setup


def _damaged(edit, *extra):
    """A copy of the finished 2-round run, damaged by ``edit(folder)``, resumed."""

    def setup(tmp, runs):
        folder = tmp / "run"
        shutil.copytree(runs / "two", folder)
        edit(folder)
        return ["run", "--resume", "--rounds", "3", "--out", str(folder), *extra]

    return setup


def _resume(*flags):
    def setup(tmp, runs):
        shutil.copytree(runs / "two", tmp / "run")
        return ["run", "--resume", "--out", str(tmp / "run"), *flags]

    return setup


def _truncate(name, size):
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:size])


def _file_as_out(tmp, _runs):
    (tmp / "afile").write_text("mine")
    return ["run", *SMALL, "--out", str(tmp / "afile")]


def _unwritable_out(tmp, _runs):
    if os.geteuid() == 0:  # root writes anywhere a permission bit allows: use a read-only mount
        if not os.path.isdir("/sys"):
            pytest.skip("no read-only location to test as root")
        return ["run", *SMALL, "--out", "/sys/privagg-test-out"]
    locked = tmp / "locked"
    locked.mkdir(mode=0o500)
    return ["run", *SMALL, "--out", str(locked / "out")]


def _users_own_files(tmp, _runs):
    (tmp / "mine").mkdir()
    (tmp / "mine" / "config.toml").write_text("mine = 1\n")
    (tmp / "mine" / "summary.json").write_text('{"mine": 1}\n')
    return ["run", *SMALL, "--out", str(tmp / "mine")]


def _npz_of_another_round(tmp, runs):
    folder = tmp / "run"
    shutil.copytree(runs / "one", folder)
    (folder / "checkpoints" / "round-1.npz").write_bytes(
        (runs / "two" / "checkpoints" / "round-2.npz").read_bytes()
    )
    return ["run", "--resume", "--rounds", "3", "--out", str(folder)]


def _manifest(text):
    return _damaged(lambda folder: (folder / "checkpoint.json").write_text(text))


def _edit_config_toml(folder):
    path = folder / "config.toml"
    path.write_text(path.read_text().replace("learning_rate = 0.1", "learning_rate = 0.5"))


def _resume_empty_folder(tmp, _runs):
    (tmp / "empty").mkdir()
    return ["run", "--resume", "--out", str(tmp / "empty")]


def _bad_data_file(tmp, _runs):
    (tmp / "data.npz").write_bytes(b"PK\x03\x04 truncated")
    (tmp / "c.toml").write_text(f'[data]\ndataset = "npz"\npath = "{tmp / "data.npz"}"\n')
    return ["run", "--config", str(tmp / "c.toml"), "--out", str(tmp / "out")]


def _flags(*argv):
    return lambda tmp, _runs: [*argv, "--out", str(tmp / "out")]


MISTAKES = [
    # (case, setup -> argv, exit status, fragment of the one-line message)
    ("out is an existing file", _file_as_out, 2, "is a file, not a folder"),
    ("out is not writable", _unwritable_out, 2, "choose a folder you can write to"),
    ("out holds the user's own files", _users_own_files, 2, "which this run did not write"),
    (
        "toml rounds = 3.0",
        _toml("[training]\nrounds = 3.0\n"),
        2,
        "training.rounds = 3.0 is invalid: an integer",
    ),
    (
        "toml rounds = true",
        _toml("[training]\nrounds = true\n"),
        2,
        "training.rounds = true is invalid: an integer (got a boolean)",
    ),
    (
        "toml enabled = 'false'",
        _toml('[secure]\nenabled = "false"\n'),
        2,
        'secure.enabled = "false" is invalid: true or false',
    ),
    (
        "toml learning_rate = nan",
        _toml("[training]\nlearning_rate = nan\n"),
        2,
        "training.learning_rate = nan is invalid: a finite number",
    ),
    ("toml unknown key", _toml("[training]\nrounds_ = 3\n"), 2, "not a configuration key"),
    ("toml syntax error", _toml("[training\n"), 2, "not valid TOML"),
    ("config file missing", _flags("run", "--config", "/nonexistent/c.toml"), 2, "not found"),
    (
        "a client above --max-weight",
        _flags("run", "--max-weight", "5", "--rounds", "1"),
        2,
        "secure.max_weight = 5 is invalid: at least",
    ),
    ("data file not an npz", _bad_data_file, 2, "is not a readable .npz file"),
    (
        "truncated checkpoint npz",
        _damaged(_truncate("checkpoints/round-2.npz", 100)),
        2,
        "round-2.npz does not match checkpoint.json",
    ),
    (
        "empty checkpoint npz",
        _damaged(_truncate("checkpoints/round-2.npz", 0)),
        2,
        "round-2.npz does not match checkpoint.json",
    ),
    (
        "checkpoint state edited",
        _damaged(_truncate("checkpoints/round-2.json", 50)),
        2,
        "round-2.json does not match checkpoint.json",
    ),
    (
        "checkpoint npz missing",
        _damaged(lambda folder: (folder / "checkpoints" / "round-2.npz").unlink()),
        2,
        "round-2.npz is missing",
    ),
    ("manifest []", _manifest("[]"), 2, "is not a privagg checkpoint manifest"),
    ("manifest null", _manifest("null"), 2, "is not a privagg checkpoint manifest"),
    ("manifest truncated", _damaged(_truncate("checkpoint.json", 20)), 2, "not readable JSON"),
    (
        "manifest of an older privagg",
        _manifest('{"completed_rounds": 2, "config": ""}'),
        2,
        "written by an older privagg",
    ),
    (
        "npz of round 2 beside a round-1 run",
        _npz_of_another_round,
        2,
        "round-1.npz does not match checkpoint.json",
    ),
    (
        "resume with --config",
        _resume("--config", "other.toml"),
        2,
        "cannot change a run being resumed",
    ),
    ("resume with fewer rounds", _resume("--rounds", "1"), 2, "a run cannot be shortened"),
    (
        "resume with other settings",
        _resume("--clients", "7"),
        2,
        "holds a run made with other settings (training.clients 6 -> 7)",
    ),
    (
        "resume after editing config.toml",
        _damaged(_edit_config_toml),
        2,
        "config.toml was edited (changed from the run's checkpoint: training.learning_rate)",
    ),
    (
        "resume a missing folder",
        _flags("run", "--resume"),
        2,
        "does not exist, so there is no run to resume",
    ),
    ("resume a folder holding no run", _resume_empty_folder, 2, "holds no privagg run"),
    ("run --rounds 0", _flags("run", "--rounds", "0"), 2, "training.rounds = 0 is invalid"),
    ("--epsilon without --dp", _flags("run", "--epsilon", "2"), 2, "--epsilon without --dp"),
    (
        "--noise-multiplier without --dp",
        _flags("run", "--noise-multiplier", "1"),
        2,
        "--noise-multiplier without --dp",
    ),
    (
        "--max-epsilon without --dp",
        _flags("run", "--max-epsilon", "3"),
        2,
        "--max-epsilon without --dp",
    ),
    (
        "--allow-overspend on a new run",
        _flags("run", "--dp", "client", "--epsilon", "2", "--allow-overspend"),
        2,
        "--resume only",
    ),
    (
        "sweep --rounds 0",
        _flags("sweep", "--rounds", "0", "--epsilons", "1"),
        2,
        "training.rounds = 0 is invalid",
    ),
    (
        "sweep --clients 0",
        _flags("sweep", "--clients", "0", "--epsilons", "1"),
        2,
        "training.clients = 0 is invalid",
    ),
    ("sweep --epsilons 0", _flags("sweep", "--epsilons", "0"), 2, "positive values"),
]


@pytest.mark.parametrize(
    ("setup", "status", "fragment"),
    [case[1:] for case in MISTAKES],
    ids=[case[0] for case in MISTAKES],
)
def test_cli_mistakes_exit_2_with_one_line_and_touch_no_file(
    setup, status, fragment, tmp_path, finished_runs, capsys, monkeypatch
):
    """Each bad input or damaged file a user can produce: the exit status, one line on stderr
    naming the file, key or value with the fix, nothing on stdout, and every file as it was
    (no run folder created, nothing overwritten)."""
    monkeypatch.chdir(tmp_path)
    argv = setup(tmp_path, finished_runs)
    before = _snapshot(tmp_path)
    assert main(argv) == status
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert fragment in err
    assert _snapshot(tmp_path) == before
    assert not Path("/sys/privagg-test-out").exists()


# ---------------------------------------------------------------- the Why list, one by one


def test_resume_with_more_rounds_is_refused_with_the_epsilon_it_would_spend(tmp_path, capsys):
    """`run --dp sample --epsilon 2 --rounds 2`, then `--resume --rounds 4`: refused (exit 2)
    with the epsilon 4 rounds would reach and the flags that allow it; nothing changes. With
    --allow-overspend it runs, and config.toml, summary.json and the output state the epsilon
    actually spent, above the target."""
    out = tmp_path / "dp"
    flags = ["--dp", "sample", "--epsilon", "2", "--clients", "6", "--quiet"]
    assert main(["run", *flags, "--rounds", "2", "--out", str(out)]) == 0
    spent = json.loads((out / "summary.json").read_text())["epsilon"]
    assert spent <= 2.0 + 1e-6
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["run", "--resume", "--rounds", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--rounds 4 would spend epsilon" in err and "--allow-overspend" in err
    assert "--max-epsilon 2" in err
    assert _snapshot(out) == before
    assert main(["run", "--resume", "--rounds", "4", "--allow-overspend", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epsilon"] > 2.0 and summary["epsilon_target"] == 2.0
    assert summary["calibrated_rounds"] == 2 and summary["rounds"] == 4
    assert f"epsilon {summary['epsilon']:.3f}" in (out / "config.toml").read_text()
    assert "OVERSPENT" in (out / "config.toml").read_text()


def test_resume_with_more_rounds_and_max_epsilon_stops_at_the_target(tmp_path, capsys):
    """The --max-epsilon path: extending a calibrated run with --max-epsilon at the target
    recalibrates nothing and trains no round past the budget (here none fits: notice, exit 0)."""
    out = tmp_path / "dp"
    flags = ["--dp", "sample", "--epsilon", "2", "--clients", "6", "--quiet"]
    assert main(["run", *flags, "--rounds", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["run", "--resume", "--rounds", "4", "--max-epsilon", "2", "--out", str(out)]) == 0
    assert "nothing to do" in capsys.readouterr().out  # the budget is spent: no round fits
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epsilon"] <= 2.0 + 1e-6 and summary["rounds"] == 2


def test_sweep_rerun_with_more_rounds_is_refused_before_any_run(tmp_path, capsys):
    """`sweep --rounds 1`, then the same --out with `--rounds 2`: refused before anything runs
    (a point's noise is calibrated for its rounds), every file unchanged."""
    out = tmp_path / "sweep"
    base = ["sweep", "--quiet", "--epsilons", "4", "--seeds", "1", "--clients", "6", "--jobs", "1"]
    assert main([*base, "--rounds", "1", "--out", str(out)]) == 0
    before = _snapshot(out)
    assert main([*base, "--rounds", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds a run of 1 rounds and this sweep asks for 2" in err
    assert _snapshot(out) == before


def test_sweep_with_a_refused_point_runs_the_others_and_exits_1(tmp_path, capsys):
    """A point its run refuses (delta above 1 / the smallest record count): the warning names it
    and why, the non-private reference still runs and lands in the table, the exit status is 1."""
    config = tmp_path / "delta.toml"
    config.write_text("[privacy]\ndelta = 0.2\n")
    out = tmp_path / "sweep"
    flags = ["--epsilons", "2", "--level", "sample", "--seeds", "1", "--clients", "6"]
    code = main(["sweep", "--config", str(config), *flags, "--rounds", "1", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "sample-level epsilon 2 seed 0 refused: privacy.delta = 0.2" in captured.err
    assert "1 of 2 points were refused" in captured.err
    document = json.loads((out / "sweep.json").read_text())
    assert [row["level"] for row in document["runs"]] == ["none"]
    assert [row["epsilon"] for row in document["refused"]] == [2.0]


def test_sweep_over_an_interrupted_run_of_other_rounds_is_refused(tmp_path, capsys):
    """A sweep point interrupted after 2 of 3 rounds, swept again with --rounds 1: refused,
    instead of reporting the 2-round point beside 1-round ones; every file unchanged."""
    out = tmp_path / "sweep"
    point = out / "eps-inf" / "seed-0"
    config = RunConfig().with_overrides(
        {"training.clients": 6, "training.rounds": 3, "out": str(point)}
    )

    def interrupt(metrics):
        if metrics.round == 2:
            raise KeyboardInterrupt  # as a kill after round 2's checkpoint

    with pytest.raises(KeyboardInterrupt):
        run_federation(config, on_round=interrupt)
    before = _snapshot(out)
    argv = ["sweep", "--epsilons", "inf", "--seeds", "1", "--clients", "6", "--jobs", "1"]
    assert main([*argv, "--rounds", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "this sweep cannot reuse" in err and "holds a run of 3 rounds" in err
    assert _snapshot(out) == before


def test_run_with_a_budget_below_one_round_is_refused_before_anything_is_written(tmp_path, capsys):
    """A budget smaller than one round (`--max-epsilon` tiny; the console used to crash on no
    rounds and leave an empty training.png): refused before round 1 (exit 2) with the noise
    multiplier that would fit, and no file written."""
    out = tmp_path / "run"
    argv = ["run", "--dp", "sample", "--noise-multiplier", "1.0", "--max-epsilon", "0.001"]
    assert main([*argv, "--clients", "6", "--rounds", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "max_epsilon" in err and "noise multiplier" in err
    assert not out.exists() or not any(out.iterdir())


def test_resume_of_a_finished_run_says_nothing_to_do_and_writes_nothing(
    tmp_path, finished_runs, capsys
):
    """`--resume` on a finished run: a notice that there is nothing to do, exit 0, no table,
    and summary.json (wall_seconds included) untouched."""
    folder = tmp_path / "run"
    shutil.copytree(finished_runs / "two", folder)
    before = _snapshot(folder)
    assert main(["run", "--resume", "--out", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "nothing to do" in printed and "all 2 rounds are done" in printed
    assert "round  accuracy" not in printed
    assert _snapshot(folder) == before


def test_resume_with_a_truncated_metrics_file_repairs_it_by_name(tmp_path, finished_runs, capsys):
    """A truncated metrics.jsonl no longer blocks resume: it is rewritten from the checkpoint
    with a warning naming the file, and the resumed run continues."""
    folder = tmp_path / "run"
    shutil.copytree(finished_runs / "two", folder)
    metrics = folder / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:50])
    assert main(["run", "--resume", "--rounds", "3", "--out", str(folder)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {metrics} did not match the checkpoint" in err
    rounds = [json.loads(line)["round"] for line in metrics.read_text().splitlines()]
    assert rounds == [1, 2, 3]


def test_version_flag():
    """`privagg --version` prints the installed version."""
    completed = subprocess.run(
        [sys.executable, "-m", "fl.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert completed.stdout.startswith("privagg ")


def test_secure_flags_reach_the_configuration():
    """--identities and --max-weight set secure.identities and secure.max_weight (and the
    max-weight refusal names the flag that fixes it)."""
    from fl.cli.main import _run_config

    args = build_parser().parse_args(["run", "--identities", "--max-weight", "77000"])
    secure = _run_config(args).secure
    assert secure.identities is True and secure.max_weight == 77_000
    args = build_parser().parse_args(["run", "--no-identities"])
    assert _run_config(args).secure.identities is False


def test_a_config_file_is_validated_together_with_the_command_lines_flags(tmp_path):
    """A file whose training.min_clients only fits with the command line's --clients is
    accepted (file and flags are checked as one whole), by run and by sweep; without the flag
    the same file is refused, naming the key and the bound."""
    from fl.cli.main import _run_config, _sweep_config
    from fl.core.config import ConfigError, load_config

    config = tmp_path / "scale.toml"
    config.write_text("[training]\nmin_clients = 800\n")
    args = build_parser().parse_args(
        ["run", "--config", str(config), "--clients", "10000", "--per-round", "1000"]
    )
    training = _run_config(args).training
    assert (training.clients, training.min_clients, training.per_round) == (10_000, 800, 1000)
    args = build_parser().parse_args(["sweep", "--config", str(config), "--clients", "10000"])
    assert _sweep_config(args).training.min_clients == 800
    with pytest.raises(ConfigError, match=r"training\.min_clients"):
        load_config(config)
    assert load_config(config, {"training.clients": 10_000}).training.min_clients == 800


def test_every_help_shows_defaults_and_no_escaped_percent():
    """Each option of each subcommand names its default in --help; no literal "%%"."""
    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.choices and "run" in a.choices]
    for name, subparser in commands.choices.items():
        formatter = subparser._get_formatter()
        for action in subparser._actions:
            if not action.option_strings or action.dest in ("help", "version"):
                continue
            text = formatter._expand_help(action) if action.help else ""
            assert "default" in text, f"privagg {name} {action.option_strings[0]}: {text!r}"
        assert "%%" not in subparser.format_help(), name


def test_json_mode_prints_one_object_per_line(tmp_path, capsys):
    """`run --json`: every stdout line is a JSON object with an event; start, one round per
    round, a summary; no colour codes. Errors are JSON events too."""
    assert main(["run", "--json", *SMALL, "--out", str(tmp_path / "run")]) == 0
    lines = capsys.readouterr().out.splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["event"] for e in events] == ["start", "round", "round", "summary"]
    assert events[-1]["rounds"] == 2 and "\x1b" not in "".join(lines)
    assert main(["run", "--json", *SMALL, "--out", str(tmp_path / "run")]) == 2
    (error,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert error["event"] == "error" and error["exit_code"] == 2


def test_quiet_mode_prints_nothing_on_success(tmp_path, capsys):
    """`run --quiet` and `aggregate --quiet` print nothing; the files hold the result."""
    assert main(["run", "--quiet", *SMALL, "--out", str(tmp_path / "run")]) == 0
    assert main(["aggregate", "--quiet", "--clients", "8", "--dim", "50"]) == 0
    assert capsys.readouterr() == ("", "")
    assert (tmp_path / "run" / "summary.json").is_file()


def test_piped_output_has_no_colour_codes(tmp_path):
    """Output to a pipe (not a terminal) carries no escape codes."""
    completed = subprocess.run(
        [sys.executable, "-m", "fl.cli", "aggregate", "--clients", "8", "--dim", "50"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")},
    )
    assert "\x1b" not in completed.stdout + completed.stderr
    assert "equals the plaintext sum" in completed.stdout


# ---------------------------------------------------------------- the jobs themselves


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
    argv = ["aggregate", "--clients", "6", "--dim", "10", "--dropout", "0.6"]
    status = main([*argv, "--dropout-phase", "share-keys"])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("round failed:") and "threshold" in err and err.count("\n") == 1


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
    assert "threshold must lie in" in capsys.readouterr().err


def test_console_script_help():
    """The installed entry point answers --help."""
    completed = subprocess.run(
        [sys.executable, "-m", "fl.cli", "aggregate", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "--dropout-phase" in completed.stdout


def test_run_writes_the_four_output_files(tmp_path, capsys):
    """`privagg run` with small arguments prints the per-round table and writes its outputs."""
    out = tmp_path / "run"
    assert main(["run", *SMALL, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "round  accuracy" in printed and "final test accuracy" in printed
    for name in ("config.toml", "metrics.jsonl", "summary.json", "training.png"):
        assert (out / name).is_file()


def test_run_resume_continues_the_same_folder(tmp_path, finished_runs):
    """--resume with more rounds continues where the run stopped."""
    out = tmp_path / "run"
    shutil.copytree(finished_runs / "one", out)
    assert main(["run", "--quiet", "--rounds", "2", "--resume", "--out", str(out)]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_run_unknown_model_is_refused_by_the_parser(capsys):
    """Enumerated flags list the allowed values."""
    with pytest.raises(SystemExit):
        main(["run", "--model", "rnn"])
    assert "choose from 'mlp', 'cnn'" in capsys.readouterr().err


@pytest.mark.parametrize("level", ["sample", "client"])
def test_run_with_dp_reports_epsilon_per_round(level, tmp_path, capsys):
    """`privagg run --dp LEVEL --epsilon 2` prints an epsilon column and writes privacy.json."""
    out = tmp_path / level
    assert main(["run", *SMALL, "--dp", level, "--epsilon", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "epsilon" in printed.splitlines()[1]
    assert "target epsilon 2 over 2 rounds" in printed.splitlines()[0]
    assert f"{level}-level" in printed and (out / "privacy.json").is_file()


def test_run_with_bad_privacy_values(tmp_path, capsys):
    """Epsilon <= 0 or a clip <= 0 fail before training with the key named."""
    argv = ["run", "--dp", "sample", "--epsilon"]
    assert main([*argv, "0", "--out", str(tmp_path / "a")]) == 2
    assert "privacy.epsilon" in capsys.readouterr().err
    assert main([*argv, "1", "--clip", "-1", "--out", str(tmp_path / "b")]) == 2
    assert "privacy.clip" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_sweep_command_prints_the_table(tmp_path, capsys):
    """`privagg sweep` over one epsilon writes its files and prints the accuracy table; its
    sweep.json is strict JSON (the reference's infinite epsilon is null)."""
    out = tmp_path / "sweep"
    argv = ["sweep", "--epsilons", "4", "--seeds", "1", "--rounds", "1", "--clients", "6"]
    assert main([*argv, "--jobs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Accuracy against epsilon" in printed and "inf (no DP)" in printed
    assert (out / "accuracy_vs_epsilon.png").is_file()
    json.loads((out / "sweep.json").read_text(), parse_constant=pytest.fail)


def test_audit_command_writes_the_report(tmp_path, capsys):
    """`privagg audit` writes audit.md and audit.json with parameters and the audit's bound."""
    status = main(["audit", "--no-tests", "--out", str(tmp_path / "audit")])
    assert status == 0
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert report["secure_aggregation"]["threshold"] >= 6
    assert report["empirical_audit"]["lower_bound"] >= 0
    assert "Empirical privacy audit" in (tmp_path / "audit" / "audit.md").read_text()


def test_audit_reports_the_client_policy_in_force(tmp_path):
    """`privagg audit --config` states the clients' policy of that configuration and whether its
    sessions meet it (a threshold below the floor is named)."""
    config = tmp_path / "weak.toml"
    config.write_text("[secure]\nthreshold = 4\n\n[policy]\nmin_clients = 8\n")
    out = tmp_path / "audit"
    assert main(["audit", "--no-tests", "--config", str(config), "--out", str(out)]) == 0
    policy = json.loads((out / "audit.json").read_text())["client_policy"]
    assert policy["min_clients"] == 8 and policy["minimum_threshold"] == 6
    assert (
        policy["sessions_meet_the_policy"].startswith("no: ")
        and "threshold 4" in (policy["sessions_meet_the_policy"])
    )
    assert "## Client policy" in (out / "audit.md").read_text()


def test_snapshot_sees_changes(tmp_path):
    """The folder hash the table relies on changes when a file does."""
    (tmp_path / "a").write_bytes(np.zeros(3).tobytes())
    before = _snapshot(tmp_path)
    (tmp_path / "a").write_bytes(np.ones(3).tobytes())
    assert _snapshot(tmp_path) != before
