"""The Flower app on Flower's deployment engine: a real SuperLink and three SuperNodes, each its
own process on 127.0.0.1 (insecure mode), running examples/flower_app for one round.

Every process is waited for until its port accepts connections (bounded, with its log in the
failure message), never for a fixed time: on a loaded machine a fixed sleep is too short."""

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

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "flower_app"
BIN = Path(sys.executable).parent
STARTUP_SECONDS = 120


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(command: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        command, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, *, timeout: float) -> None:
    """Return once 127.0.0.1:port accepts a connection; fail with the process's log if it
    exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"{log.stem} exited with status {process.returncode} before listening on "
                f"port {port}; its log:\n{log.read_text()[-3000:]}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(
        f"{log.stem} did not accept connections on 127.0.0.1:{port} within {timeout:g} s; its "
        f"log:\n{log.read_text()[-3000:]}"
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_wait_for_port_fails_clearly_when_the_process_dies(tmp_path):
    """The wait names the process, its exit status and its log instead of hanging."""
    log = tmp_path / "superlink.log"
    process = _start([sys.executable, "-c", "print('bad flag'); raise SystemExit(3)"], log, {})
    with pytest.raises(pytest.fail.Exception, match=r"superlink exited with status 3[\s\S]*bad"):
        _wait_for_port(_free_port(), process, log, timeout=30)


@pytest.mark.slow
def test_flower_app_runs_on_superlink_and_three_supernodes(tmp_path):
    """Secure aggregation across three SuperNode processes, with identities (the default
    across a network): the round completes with all three contributors and the global model
    learns; every process started is stopped, even on failure.
    (Slow: process start-up dominates. The protocol over Flower is covered fast by
    tests/fl/test_flower.py, the process handling by the test above.)"""
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # the processes (and the ServerApp/ClientApp processes they start) import this checkout
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "PYTHONPATH": pythonpath}
    port = _free_port()
    (tmp_path / "flwr").mkdir()
    (tmp_path / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    from secagg.hazmat.signing import SigningKey

    seeds = [os.urandom(32) for _ in range(3)]
    keys = [SigningKey(seed) for seed in seeds]
    allowlist = tmp_path / "allowlist.txt"
    allowlist.write_text("".join(key.public_bytes.hex() + "\n" for key in keys))
    for partition, seed in enumerate(seeds):
        (tmp_path / f"node{partition}.key").write_text(seed.hex())
    processes = []
    try:
        log = tmp_path / "superlink.log"
        command = [str(BIN / "flower-superlink"), "--insecure", "--port", str(port)]
        processes.append(_start([*command, "--disable-runtime-dependency-installation"], log, env))
        _wait_for_port(port, processes[-1], log, timeout=STARTUP_SECONDS)
        for partition in range(3):
            node_port, log = _free_port(), tmp_path / f"supernode{partition}.log"
            processes.append(
                _start(
                    [
                        str(BIN / "flower-supernode"),
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{port}",
                        "--port",
                        str(node_port),
                        "--node-config",
                        # three processes: the nodes lower their cohort floor to three; each
                        # holds its identity key and the federation's allowlist (the default
                        # across a network: identities required)
                        f"partition-id={partition} num-partitions=3 privagg-min-clients=3 "
                        f"privagg-key='{tmp_path / f'node{partition}.key'}' "
                        f"privagg-allowlist='{allowlist}'",
                    ],
                    log,
                    env,
                )
            )
            _wait_for_port(node_port, processes[-1], log, timeout=STARTUP_SECONDS)
        result = tmp_path / "result.json"
        completed = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                str(APP),
                "test",
                "--stream",
                "--run-config",
                f"result-path='{result}' num-rounds=1 min-nodes=3 client-min-clients=3 "
                f"allowlist-path='{allowlist}'",
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
