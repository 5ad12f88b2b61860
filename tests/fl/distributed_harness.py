"""Run a function on N gloo ranks on 127.0.0.1, each in its own process, every wait bounded.

The store is hosted by the test process itself (as torchrun's agent hosts it), so any rank,
rank 0 included, can be killed. Every process started here is stopped in ``finally``; a rank's
result (or its error, with the traceback) comes back as JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass(frozen=True)
class RankResult:
    """What one rank returned, or the error it raised, or nothing (it was killed)."""

    rank: int
    exitcode: int | None
    value: Any = None
    error: str | None = None
    message: str = ""
    details: dict | None = None
    traceback: str = ""

    @property
    def killed(self) -> bool:
        return self.exitcode is not None and self.exitcode < 0


def _entry(target, rank: int, world: int, port: int, out: str, kwargs: dict) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    result: dict[str, Any]
    try:
        store = dist.TCPStore("127.0.0.1", port, world, False, timeout=timedelta(seconds=60))
        dist.init_process_group(
            "gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=60)
        )
        result = {"value": target(rank, world, **kwargs)}
    except BaseException as error:  # report any failure to the test, with its type
        result = {
            "error": type(error).__name__,
            "message": str(error),
            "details": {
                key: list(value) if isinstance(value, tuple) else value
                for key, value in vars(error).items()
                if isinstance(value, (int, str, tuple, list))
            },
            "traceback": traceback.format_exc(),
        }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    os._exit(0)  # no teardown: a lost peer must not make the exit hang


def run_ranks(target, world: int, *, timeout: float = 90.0, **kwargs: Any) -> list[RankResult]:
    """Start ``target(rank, world, **kwargs)`` on ``world`` ranks; wait at most ``timeout`` s.

    Raises:
        AssertionError: a rank was still running at the deadline (named, with the others'
            results), after every process was stopped.
    """
    store = dist.TCPStore(
        "127.0.0.1", 0, None, True, timeout=timedelta(seconds=60), wait_for_workers=False
    )
    context = mp.get_context("spawn")
    processes = []
    with tempfile.TemporaryDirectory() as out:
        try:
            for rank in range(world):
                process = context.Process(
                    target=_entry, args=(target, rank, world, store.port, out, kwargs), daemon=True
                )
                process.start()
                processes.append(process)
            deadline = time.monotonic() + timeout
            for process in processes:
                process.join(max(0.0, deadline - time.monotonic()))
            hung = [rank for rank, p in enumerate(processes) if p.is_alive()]
        finally:
            for process in processes:
                if process.is_alive():
                    process.kill()
            for process in processes:
                process.join(10)
        results = []
        for rank, process in enumerate(processes):
            path = Path(out, f"rank{rank}.json")
            data = json.loads(path.read_text()) if path.exists() else {}
            results.append(
                RankResult(
                    rank=rank,
                    exitcode=process.exitcode,
                    value=data.get("value"),
                    error=data.get("error"),
                    message=data.get("message", ""),
                    details=data.get("details"),
                    traceback=data.get("traceback", ""),
                )
            )
    assert not hung, f"ranks {hung} did not finish within {timeout} s; the others: {results}"
    return results


def values(results: list[RankResult]) -> list[Any]:
    """Every rank's value, after asserting that none raised."""
    failed = [r for r in results if r.error is not None]
    assert not failed, "\n".join(
        f"rank {r.rank}: {r.error}: {r.message}\n{r.traceback}" for r in failed
    )
    return [r.value for r in results]
