"""The exceptions of :mod:`fl`: one root, and errors that name what was wrong and how to fix it."""

from __future__ import annotations

import json

__all__ = [
    "BudgetError",
    "CheckpointError",
    "ClippedValuesWarning",
    "ConfigError",
    "ConfigFileError",
    "DataError",
    "FLError",
    "InputError",
    "NonFiniteUpdateWarning",
    "OutputError",
    "UsageError",
    "WorkerError",
]


class FLError(Exception):
    """Root of every error raised by :mod:`fl`."""

    def __reduce__(self) -> tuple:
        # Rebuilt from its message and attributes, whatever its constructor takes: the error
        # crosses process boundaries intact (a sweep's worker raises it, the parent reports it).
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[FLError], args: tuple, state: dict) -> FLError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


def _show(value: object) -> str:
    """A value as it would be written in TOML (``true``, ``"false"``, ``3.0``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


class ConfigError(FLError, ValueError):
    """An invalid configuration value, raised before round 1.

    Attributes:
        key: the dotted configuration key, e.g. ``training.rounds``.
        value: the value given.
        allowed: what would be accepted (the fix).
        source: the file the value came from, if any.
    """

    def __init__(self, key: str, value: object, allowed: str, *, source: str | None = None) -> None:
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key} = {_show(value)} is invalid: {allowed}")
        self.key = key
        self.value = value
        self.allowed = allowed
        self.source = source

    def in_file(self, source: str) -> ConfigError:
        """The same error, naming the file the value was read from."""
        if self.source is not None:
            return self
        return ConfigError(self.key, self.value, self.allowed, source=source)


class ConfigFileError(ConfigError):
    """A configuration file that cannot be read at all: missing, unreadable, or not TOML."""

    def __init__(self, source: str, problem: str) -> None:
        FLError.__init__(self, f"{source}: {problem}")
        self.key = "--config"
        self.value = source
        self.allowed = problem
        self.source = source


class DataError(FLError):
    """A data set that cannot be used: missing file, wrong arrays, shapes that do not fit."""


class UsageError(FLError):
    """Command-line flags that cannot work together, or cannot work as given."""


class OutputError(FLError):
    """An output folder that cannot be used: not a folder, not writable, holding files this run
    did not write, or holding no run to resume."""


class CheckpointError(FLError):
    """A checkpoint that cannot be trusted: a file missing, damaged, or not the one its manifest
    names. Never resumed from."""


class BudgetError(FLError):
    """A request that would spend more privacy budget than the run was calibrated for."""


class WorkerError(FLError):
    """A worker process of the engine failed at a client's work: the client's code raised, or
    the process stopped (killed, out of memory). The round is not released; the pool stops.

    Attributes:
        round_index: the round, 0-based (None: not in a round, e.g. while starting).
        client: the client whose work failed (None: not tied to one client).
        worker: the worker's index in the pool.
        remote_type: the qualified name of the exception the worker raised (None: it stopped).
        remote_traceback: the worker's traceback, as text ("" when it stopped).
    """

    def __init__(
        self,
        message: str,
        *,
        round_index: int | None = None,
        client: int | None = None,
        worker: int | None = None,
        remote_type: str | None = None,
        remote_traceback: str = "",
    ) -> None:
        where = []
        if round_index is not None:
            where.append(f"round {round_index + 1}")
        if client is not None:
            where.append(f"client {client}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.round_index = round_index
        self.client = client
        self.worker = worker
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback


class InputError(FLError, ValueError):
    """A value passed to an :mod:`fl` function that it cannot use as given (never silently
    changed instead)."""


class ClippedValuesWarning(UserWarning):
    """Values beyond an explicitly given clipping bound were clipped (the count is in the
    message)."""


class NonFiniteUpdateWarning(UserWarning):
    """A client's update held NaN or infinite values and was left out of its round."""
