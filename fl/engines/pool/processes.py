"""Worker processes that do the clients' work of a round, so a round uses every core.

Why processes: the clients' work is Python-heavy (the protocol's key agreements, encryption and
Shamir sharing, the local training loop), so threads would queue on the interpreter lock.

Why this small pool and not Ray (installed with the Flower extra): the engine must run with the
core install alone; a pool of plain ``multiprocessing`` processes starts in seconds, costs one
Python process per core and nothing else, and lets a client's state stay in the process that
holds it for a whole round (its protocol keys never cross a process boundary), which a task
scheduler that may move work between processes does not promise. Ray remains the way to go
past one machine, through the Flower engine.

Processes are started with ``spawn``: torch's thread pools do not survive a ``fork``.

Each worker serves one command at a time over a private pipe: zero or more ``("item", client,
payload)`` reports, then ``("ok", result)`` or ``("error", details)``. The pipes are anonymous,
created by this process for its own children: nothing outside the run can write to them, and
the protocol's messages cross them as the canonical bytes the protocol defines (the pipe's
framing is ``multiprocessing``'s, which pickles; it never carries anything from another party).

No orphans: workers ignore SIGINT (the parent handles Ctrl-C and stops them), exit when their
pipe closes (the parent exited or crashed), on Linux also get SIGTERM when the parent dies, and
are stopped by :meth:`WorkerPool.close`, by a finalizer and, as daemonic processes, at exit.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import signal
import sys
import traceback
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any

from fl.engines.base import ROUND_FAILURES
from fl.errors import ConfigError, WorkerError

__all__ = ["MIN_CLIENTS_PER_WORKER", "WorkerPool", "available_cores", "worker_count"]

_STOP_SECONDS = 5.0

MIN_CLIENTS_PER_WORKER = 32
"""A worker process pays for its start (a few seconds: it loads torch) and for sending its
clients' data and updates only with enough clients per round; below this many per worker the
engine uses fewer workers."""


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def worker_count(requested: int, cohort: int) -> int:
    """The worker processes a run with ``cohort`` clients per round uses when ``requested``
    are asked for: at most one per :data:`MIN_CLIENTS_PER_WORKER` clients (1: this process).

    Raises:
        ConfigError: ``requested`` is not an integer >= 1.
    """
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ConfigError("workers", requested, "an integer >= 1 (1: no worker processes)")
    return max(1, min(requested, cohort // MIN_CLIENTS_PER_WORKER))


def die_with_parent(parent: int) -> None:
    """On Linux, ask for SIGTERM when the parent dies (best effort), and exit if it already has."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl: EOF on the pipe suffices
            pass
    if os.getppid() != parent:
        os._exit(0)


def _describe(error: BaseException, shard: Any) -> dict[str, Any]:
    cls = type(error)
    round_index, client = shard.current
    return {
        "module": cls.__module__,
        "name": cls.__qualname__,
        "message": str(error),
        "traceback": "".join(traceback.format_exception(error)),
        "round_index": round_index,
        "client": client,
    }


def _serve(conn: Connection, parent: int) -> None:
    """A worker's loop: run commands on its :class:`~fl.engines.pool.shard.ClientShard`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)
    import torch

    torch.set_num_threads(1)
    from fl.engines.pool.shard import ClientShard

    shard = ClientShard()
    commands = {
        "setup": shard.setup,
        "train": shard.train,
        "encode": shard.encode,
        "open_session": shard.open_session,
        "phase": shard.phase,
        "remove_noise": shard.remove_noise,
        "close_session": shard.close_session,
    }

    def report(client: int, item: Any) -> None:
        conn.send(("item", client, item))

    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent is gone
        try:
            command, args = ForkingPickler.loads(data)
            if command == "stop":
                return
            result = commands[command](report, *args)
        except Exception as error:  # unloadable arguments (a model class it cannot import), or
            # the clients' work: reported, and the worker waits for the next command
            reply: tuple = ("error", _describe(error, shard))
        else:
            reply = ("ok", result)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


@dataclass(eq=False)
class _Worker:
    index: int
    process: BaseProcess
    conn: Connection
    # the clients of the command in flight, in the order the worker takes them, and those done
    clients: Sequence[int] = ()
    done: set[int] = field(default_factory=set)


def _stop(workers: list[_Worker]) -> None:
    """Stop every worker: ask, wait, then terminate and kill what is left; close the pipes."""
    for worker in workers:
        with contextlib.suppress(OSError, ValueError):  # already gone, or its pipe closed
            worker.conn.send(("stop", ()))
    for worker in workers:
        worker.process.join(_STOP_SECONDS)
        if worker.process.is_alive():
            worker.process.terminate()
            worker.process.join(_STOP_SECONDS)
        if worker.process.is_alive():  # pragma: no cover - SIGTERM ignored
            worker.process.kill()
            worker.process.join()
        worker.conn.close()


def _rebuild(details: dict[str, Any]) -> BaseException | None:
    """The worker's exception as its own type, when it is one that ends a round without a
    release (:data:`fl.engines.base.ROUND_FAILURES`): the engine then treats the round exactly
    as the in-process engine would."""
    try:
        cls = getattr(importlib.import_module(details["module"]), details["name"])
    except (ImportError, AttributeError):
        return None
    if not (isinstance(cls, type) and issubclass(cls, ROUND_FAILURES)):
        return None
    error = cls.__new__(cls)
    Exception.__init__(error, details["message"])
    return error


class WorkerPool:
    """``workers`` worker processes, each holding a share of every round's clients.

    Use it as a context manager (or call :meth:`close`): leaving the block stops every worker.

    Args:
        workers: how many processes (at least 1).
        trainer: what every client needs to train (sent once to each worker); None for a pool
            that only runs the protocol.

    Raises:
        ConfigError: ``workers`` below 1, or a trainer (its model) that cannot be sent to
            another process.
        WorkerError: a worker failed to start.

    Example:
        >>> with WorkerPool(2) as pool:  # doctest: +SKIP
        ...     pool.size
        2
    """

    def __init__(self, workers: int, *, trainer: Any = None) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError("workers", workers, "an integer >= 1 (1: no worker processes)")
        context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._broken: WorkerError | None = None
        self._finalizer = weakref.finalize(self, _stop, self._workers)
        try:
            for index in range(workers):
                parent_end, child_end = context.Pipe(duplex=True)
                process = context.Process(
                    target=_serve,
                    args=(child_end, os.getpid()),
                    name=f"privagg-worker-{index}",
                    daemon=True,
                )
                process.start()
                child_end.close()  # the worker holds the only other end: EOF when it dies
                self._workers.append(_Worker(index, process, parent_end))
            self.pids = tuple(self.call("setup", [(trainer,)] * workers))
        except WorkerError as error:
            self.close()
            if error.remote_type is None:  # a worker died while it started
                raise WorkerError(
                    f"{error}. A new process imports the main module: start the run under "
                    "'if __name__ == \"__main__\":' in a script, or use one process "
                    "(workers=1, --workers 1)",
                    worker=error.worker,
                ) from None
            raise ConfigError(
                "workers",
                workers,
                "1, or a model that a new process can load (its class defined at module level "
                f"in an importable module): the workers could not take it ({error})",
            ) from None
        except BaseException:
            self.close()
            raise

    @property
    def size(self) -> int:
        """The number of worker processes."""
        return len(self._workers)

    @property
    def healthy(self) -> bool:
        """Whether the pool can take commands (no worker lost, not closed)."""
        return self._broken is None and self._finalizer.alive

    def close(self) -> None:
        """Stop every worker (idempotent)."""
        self._finalizer()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(
        self,
        command: str,
        args: Sequence[tuple | None],
        *,
        clients: Sequence[Sequence[int]] | None = None,
        round_index: int | None = None,
        on_item: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        """Run ``command`` on worker i with ``args[i]`` (None: not on that worker) and wait for
        them all.

        Args:
            command: a :class:`~fl.engines.pool.shard.ClientShard` method.
            args: each worker's arguments.
            clients: each worker's clients, in the order it takes them (to name the client a
                worker was on if it stops).
            round_index: the round, for error messages.
            on_item: called with ``(client, item)`` for every client report, as it arrives.

        Returns:
            Each worker's result (None where it had no command).

        Raises:
            WorkerError: a worker stopped (the pool is closed), or a client's work raised.
            secagg.ThresholdNotMet, secagg.PolicyViolation: a client's side of the protocol
                ended the round (raised as the in-process engine would raise it).
        """
        if self._broken is not None:
            raise WorkerError(f"the worker pool stopped earlier ({self._broken})")
        if not self._finalizer.alive:
            raise WorkerError("the worker pool is closed")
        if len(args) != self.size:
            raise ValueError(f"args for {len(args)} workers, the pool has {self.size}")
        active: dict[Connection, _Worker] = {}
        for worker, arguments in zip(self._workers, args, strict=True):
            if arguments is None:
                continue
            worker.clients = clients[worker.index] if clients is not None else ()
            worker.done = set()
            try:
                worker.conn.send((command, arguments))
            except (BrokenPipeError, OSError) as error:
                self._fail(self._stopped(worker, round_index, error))
            except Exception as error:  # what cannot be pickled: user objects, lambdas
                self._broken = WorkerError(f"sending {command!r} failed")
                self.close()  # the workers already sent a command would answer out of turn
                raise ConfigError(
                    "workers",
                    self.size,
                    f"1, or objects that another process can load: sending {command!r} to a "
                    f"worker failed ({type(error).__name__}: {error}); define the model's class "
                    "at module level",
                ) from None
            active[worker.conn] = worker
        results: list[Any] = [None] * self.size
        errors: list[dict[str, Any]] = []
        while active:
            ready = wait([*active, *(w.process.sentinel for w in active.values())])
            for conn in [c for c in ready if c in active]:
                worker = active[conn]
                try:
                    message = conn.recv()
                except (EOFError, OSError) as error:
                    self._fail(self._stopped(worker, round_index, error))
                if message[0] == "item":
                    worker.done.add(message[1])
                    if on_item is not None:
                        on_item(message[1], message[2])
                    continue
                del active[conn]
                if message[0] == "ok":
                    results[worker.index] = message[1]
                else:
                    errors.append({**message[1], "worker": worker.index})
            for worker in list(active.values()):
                if worker.process.sentinel in ready and not worker.conn.poll():
                    self._fail(self._stopped(worker, round_index, None))
        if errors:
            raise self._remote_error(min(errors, key=lambda e: (e["client"] is None, e["client"])))
        return results

    def _remote_error(self, details: dict[str, Any]) -> BaseException:
        rebuilt = _rebuild(details)
        if rebuilt is not None:
            return rebuilt
        return WorkerError(
            f"{details['name']}: {details['message']} (in worker process {details['worker']})",
            round_index=details["round_index"],
            client=details["client"],
            worker=details["worker"],
            remote_type=f"{details['module']}.{details['name']}",
            remote_traceback=details["traceback"],
        )

    def _stopped(
        self, worker: _Worker, round_index: int | None, error: BaseException | None
    ) -> WorkerError:
        """The error for a worker that is gone, naming the client it was working on."""
        worker.process.join(_STOP_SECONDS)
        code = worker.process.exitcode
        if code is not None and code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        elif code is not None:
            how = f"exited with status {code}"
        else:
            how = f"stopped answering ({error})"
        pending = [u for u in worker.clients if u not in worker.done]
        client = pending[0] if pending else None
        return WorkerError(
            f"worker process {worker.index} (pid {worker.process.pid}) {how} while it ran this "
            "client's work; the run is checkpointed after the last completed round: resume "
            "with --resume (with fewer --workers if memory ran out)",
            round_index=round_index,
            client=client,
            worker=worker.index,
        )

    def _fail(self, error: WorkerError) -> None:
        """Stop the whole pool and raise ``error``: a lost worker took its clients' state."""
        self._broken = error
        self.close()
        raise error
