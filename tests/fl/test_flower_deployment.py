"""The Flower app on Flower's deployment engine: a real SuperLink and three SuperNodes, each its
own process on 127.0.0.1 (insecure mode), running examples/flower_app for one round."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="the Flower tests need the optional extra privagg[flower]")

APP = Path(__file__).resolve().parents[2] / "examples" / "flower_app"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(command: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        command, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_flower_app_runs_on_superlink_and_three_supernodes(tmp_path):
    """Secure aggregation across three SuperNode processes: the round completes with all three
    contributors and the global model learns; every process started is stopped, even on failure."""
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr")}
    port = _free_port()
    (tmp_path / "flwr").mkdir()
    (tmp_path / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    processes = []
    try:
        processes.append(
            _start(
                [
                    str(BIN / "flower-superlink"),
                    "--insecure",
                    "--port",
                    str(port),
                    "--disable-runtime-dependency-installation",
                ],
                tmp_path / "superlink.log",
                env,
            )
        )
        time.sleep(3)
        for partition in range(3):
            processes.append(
                _start(
                    [
                        str(BIN / "flower-supernode"),
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{port}",
                        "--port",
                        str(_free_port()),
                        "--node-config",
                        # three processes: the nodes lower their cohort floor to three
                        f"partition-id={partition} num-partitions=3 privagg-min-clients=3",
                    ],
                    tmp_path / f"supernode{partition}.log",
                    env,
                )
            )
        result = tmp_path / "result.json"
        completed = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                str(APP),
                "test",
                "--stream",
                "--run-config",
                f"result-path='{result}' num-rounds=1 min-nodes=3 client-min-clients=3",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.is_file(), completed.stdout[-3000:] + completed.stderr[-3000:]
        report = json.loads(result.read_text())
        assert report["nodes"] == 3
        assert report["history"][0]["contributors"] == 3
        assert report["history"][0]["accuracy"] > 0.3  # one round from a random model (10% chance)
    finally:
        for process in processes:
            _stop(process)
    assert all(process.poll() is not None for process in processes)
