"""The examples run as written, and secure aggregation does not change what the loop learns."""

import importlib
import itertools
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FLOWER_APP = EXAMPLES / "flower_app"
# the scripts import this checkout, not whichever privagg is installed
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
}


def _final_accuracy(script: str) -> float:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env=ENV,
    )
    return float(re.findall(r"test accuracy ([0-9.]+)", completed.stdout)[-1])


def test_plain_and_secure_pytorch_loops_learn_the_same():
    """Both loops reach 85% on digits, within 3 points of each other (one client drops out of
    each secure round, so the two are not identical)."""
    plain, secure = (
        _final_accuracy("plain_pytorch_loop.py"),
        _final_accuracy("secure_pytorch_loop.py"),
    )
    assert plain > 0.85 and secure > 0.85
    assert abs(plain - secure) < 0.03


@pytest.fixture
def flower_app(monkeypatch):
    pytest.importorskip(
        "flwr", reason="the Flower example needs the optional extra privagg[flower]"
    )
    monkeypatch.syspath_prepend(str(FLOWER_APP))
    yield
    for name in [m for m in sys.modules if m == "flower_app" or m.startswith("flower_app.")]:
        del sys.modules[name]
    sys.modules.pop("run_simulation", None)


def test_flower_app_uses_no_deprecated_flower_api(flower_app):
    """The app and its runner load with every deprecation turned into an error, and the runner
    uses `flwr run` on a SuperLink, not the deprecated `flwr.simulation.run_simulation`. (The
    full run is the slow test below.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", FutureWarning)
        client = importlib.import_module("flower_app.client_app")
        server = importlib.import_module("flower_app.server_app")
        runner = importlib.import_module("run_simulation")
    assert client.app is not None and server.app is not None
    source = (FLOWER_APP / "run_simulation.py").read_text()
    assert "run_simulation(" not in source and '"run",' in source
    task = importlib.import_module("flower_app.task")
    x, y = task.examples(3, 0)
    assert len(x) == len(y) > 0
    assert runner.ANSI.sub("", "\x1b[92mINFO \x1b[0m: round 1") == "INFO : round 1"


def test_flower_runner_strips_colour_codes_off_a_terminal(flower_app, capsys):
    """Streamed Flower logs keep their colours on a terminal and lose them anywhere else."""
    runner = importlib.import_module("run_simulation")
    runner.relay(["\x1b[93mWARNING \x1b[0m: x\n"], colour=False)
    runner.relay(["\x1b[93mWARNING \x1b[0m: x\n"], colour=True)
    assert capsys.readouterr().out == "WARNING : x\n\x1b[93mWARNING \x1b[0m: x\n"


@pytest.mark.slow
def test_flower_app_runs_on_the_simulation_runtime():
    """examples/flower_app/run_simulation.py completes three rounds on Flower's simulation
    runtime and the model learns; its output (not a terminal) has no colour codes and no
    deprecation notice."""
    pytest.importorskip(
        "flwr", reason="the Flower example needs the optional extra privagg[flower]"
    )
    completed = subprocess.run(
        [sys.executable, str(FLOWER_APP / "run_simulation.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        env=ENV,
    )
    output = completed.stdout + completed.stderr
    accuracies = [float(a) for a in re.findall(r"round \d: accuracy ([0-9.]+)", output)]
    assert len(accuracies) == 3 and accuracies[-1] > 0.5
    assert "\x1b" not in output
    assert "deprecat" not in output.lower()


def _torchrun(script: str) -> str:
    """The stdout of ``script`` run under torchrun with 4 processes on this machine."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "4",
            str(EXAMPLES / script),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env={**ENV, "OMP_NUM_THREADS": "1"},
    )
    return completed.stdout


def _torchrun_accuracy(script: str) -> float:
    return float(re.findall(r"test accuracy ([0-9.]+)", _torchrun(script))[-1])


@pytest.mark.slow
def test_the_secure_ddp_script_reaches_the_plain_ddp_scripts_accuracy():
    """examples/torchrun_secure_ddp.py (the plain DDP script plus register_secure_hook) reaches
    the plain script's accuracy on digits under torchrun with 4 processes. The fast test of the
    same behaviour is tests/fl/test_distributed.py's DDP-hook test."""
    plain = _torchrun_accuracy("torchrun_plain_ddp.py")
    secure = _torchrun_accuracy("torchrun_secure_ddp.py")
    assert plain > 0.85
    assert abs(plain - secure) <= 0.01


@pytest.mark.slow
def test_the_private_ddp_script_learns_digits_and_reports_a_growing_epsilon():
    """examples/torchrun_private_ddp.py (per-rank DP-SGD, secure sum) under torchrun with 4
    processes: well above chance after 10 epochs, epsilon printed after every epoch and
    growing. The fast test of the same behaviour is tests/fl/test_distributed.py's per-rank
    DP-SGD test."""
    output = _torchrun("torchrun_private_ddp.py")
    lines = re.findall(r"test accuracy ([0-9.]+), epsilon ([0-9.]+)", output)
    assert len(lines) == 10
    epsilons = [float(e) for _, e in lines]
    assert all(b > a for a, b in itertools.pairwise(epsilons))
    assert float(lines[-1][0]) > 0.8
