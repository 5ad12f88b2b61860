"""Run the app on Flower's simulation runtime: 5 virtual SuperNodes, 3 rounds.

This is what ``flwr run examples/flower_app local --stream`` does with Flower's own managed
SuperLink, scripted so that it leaves nothing running: start a SuperLink in simulation mode on a
free port (with a private ``FLWR_HOME``), wait until it accepts connections, set the federation
to 5 simulated SuperNodes, ``flwr run`` the app with ``--stream``, stop the SuperLink.

    python examples/flower_app/run_simulation.py [--rounds N] [--nodes N]

When stdout is not a terminal, the streamed Flower logs are passed on without colour codes.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = Path(__file__).resolve().parent
ROOT = APP.parents[1]  # the privagg checkout: its code is what the SuperLink's apps import
BIN = Path(sys.executable).parent
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, *, timeout: float, name: str) -> None:
    """Return once ``127.0.0.1:port`` accepts a connection.

    Raises:
        RuntimeError: the process exited first, or ``timeout`` seconds passed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{name} did not accept connections on 127.0.0.1:{port} in {timeout:g} s")


def stop(process: subprocess.Popen) -> None:
    """Stop a process started in its own session, and everything it started."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def relay(stream, *, colour: bool) -> None:
    """Copy a child's output to ours, without colour codes unless we write to a terminal."""
    for line in stream:
        sys.stdout.write(line if colour else ANSI.sub("", line))
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default: 3)")
    parser.add_argument(
        "--nodes",
        type=int,
        default=5,
        help="simulated SuperNodes (default: 5, the smallest cohort the nodes accept)",
    )
    args = parser.parse_args(argv)
    colour = sys.stdout.isatty()
    with tempfile.TemporaryDirectory(prefix="flwr-home-") as home:
        port = free_port()
        env = {
            **os.environ,
            "FLWR_HOME": home,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # silences Ray's future-default notice
            "RAY_COLOR_PREFIX": "1" if colour else "0",
        }
        Path(home, "config.toml").write_text(
            f'[superlink]\ndefault = "simulation"\n\n[superlink.simulation]\n'
            f'address = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        with open(Path(home, "superlink.log"), "w") as log:
            superlink = subprocess.Popen(
                [
                    str(BIN / "flower-superlink"),
                    "--insecure",
                    "--simulation",
                    "--port",
                    str(port),
                    "--disable-runtime-dependency-installation",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
                start_new_session=True,
            )
            try:
                wait_for_port(port, superlink, timeout=120, name="the SuperLink")
                return _run_app(env, nodes=args.nodes, rounds=args.rounds, colour=colour)
            finally:
                stop(superlink)


def _run_app(env: dict, *, nodes: int, rounds: int, colour: bool) -> int:
    """``flwr run`` the app on the SuperLink, streaming its logs; its exit status."""
    run = subprocess.Popen(
        [
            str(BIN / "flwr"),
            "run",
            str(APP),
            "--stream",
            "--federation-config",
            f"num-supernodes={nodes}",
            "--run-config",
            f"num-rounds={rounds} min-nodes={nodes}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    relay(run.stdout, colour=colour)
    return run.wait()


if __name__ == "__main__":
    sys.exit(main())
