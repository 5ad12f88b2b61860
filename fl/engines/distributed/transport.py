"""The control channel: small messages through the process group's store, every wait bounded.

torch.distributed's store (the TCPStore that ``torchrun`` or ``init_process_group`` starts) is a
key-value server every rank can reach. It carries the protocol's small messages: key
advertisements, share offers, statuses, decisions, seeds and shares (bytes from
:mod:`secagg.multistep.messages`). Bulk vectors never go through it (it moves about 100 MB/s),
they go through gloo (:mod:`.allreduce`).

Every wait has a deadline; a key that did not appear by then is reported missing, never waited
for again. Decisions use the store's atomic compare-and-set: the first proposal wins and every
rank reads the one that won, so all ranks act on the same decision even when their deadlines
differ.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import timedelta

import torch.distributed as dist

from fl.engines.distributed.errors import StoreUnavailable

__all__ = ["Deadline", "StoreChannel"]


class Deadline:
    """A point in time (monotonic clock) that waits may not pass."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    @property
    def remaining(self) -> float:
        """Seconds left (0 once passed)."""
        return max(0.0, self.at - time.monotonic())

    @property
    def passed(self) -> bool:
        """Whether the deadline is over."""
        return time.monotonic() >= self.at


class StoreChannel:
    """Namespaced, bounded access to a torch.distributed store.

    Args:
        store: the store (``torch.distributed``'s default store when the engine builds one).
        prefix: the namespace of this channel's keys.
    """

    def __init__(self, store: dist.Store, prefix: str) -> None:
        self.prefix = prefix
        self.store = store
        self._store = dist.PrefixStore(prefix, store)
        self.bytes_read = 0
        self.bytes_written = 0

    def post(self, key: str, value: bytes) -> None:
        """Publish ``value`` under ``key``."""
        self.bytes_written += len(value)
        self._call(self._store.set, key, value)

    def propose(self, key: str, value: bytes) -> bytes:
        """Set ``key`` to ``value`` unless it holds a value already; return the value it holds."""
        won = bytes(self._call(self._store.compare_set, key, b"", value))
        self.bytes_read += len(won)
        return won

    def wait_all(self, keys: Iterable[str], deadline: Deadline) -> dict[str, bytes]:
        """The values of every key present by the deadline (all of them, if they all appear).

        Returns as soon as all keys exist; otherwise at the deadline, with those that do.
        """
        keys = list(keys)
        present: list[str] = []
        pending = list(keys)
        while pending:
            try:
                self._call(
                    self._store.wait, pending, timedelta(seconds=max(deadline.remaining, 0.001))
                )
                present += pending
                pending = []
            except dist.DistStoreError:
                # timed out: keep the keys that did appear, and stop
                present += [k for k in pending if self._call(self._store.check, [k])]
                pending = []
        if not present:
            return {}
        values = self._call(self._store.multi_get, present)
        self.bytes_read += sum(len(v) for v in values)
        return dict(zip(present, (bytes(v) for v in values), strict=True))

    def ready(self, key: str) -> bool:
        """Whether ``key`` exists (never waits)."""
        return bool(self._call(self._store.check, [key]))

    def read(self, key: str) -> bytes:
        """The value of a key known to exist."""
        value = bytes(self._call(self._store.get, key))
        self.bytes_read += len(value)
        return value

    def wait_one(self, key: str, deadline: Deadline) -> bytes | None:
        """The value of ``key`` once it exists, or ``None`` at the deadline."""
        return self.wait_all([key], deadline).get(key)

    def delete(self, keys: Iterable[str]) -> None:
        """Remove keys this rank wrote and no one will read again."""
        for key in keys:
            self._call(self._store.delete_key, key)

    def _call(self, method, *args):
        try:
            return method(*args)
        except dist.DistStoreError:
            raise
        except (RuntimeError, ConnectionError, OSError) as error:
            raise StoreUnavailable(
                f"the process group's store cannot be reached ({error}); the process that "
                "hosts it (torchrun's agent, or rank 0) is gone"
            ) from error
