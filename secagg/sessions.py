"""The sessions a client has joined: each session id once, rounds only forward.

A server that runs one session twice - with and without a client u, or collecting signatures on
several sets U3 - can subtract the two sums and read u's input. A :class:`SessionLog` kept by the
client (Flower: in the node's state) refuses a session id it has seen and any round not after the
last one it joined. Keep the log for as long as the client trains with one server (a Flower run);
a client that loses it can be asked to join again (SECURITY.md).
"""

from __future__ import annotations

import json

from secagg.config import SESSION_ID_BYTES, SecAggConfig
from secagg.errors import LocalProtocolError, ReplayedSession

__all__ = ["SessionLog"]


class SessionLog:
    """The session ids and the last round a client has joined.

    Example:
        >>> from secagg import SecAggConfig
        >>> log = SessionLog()
        >>> config = SecAggConfig.create(range(1, 6), vector_length=4, round_index=3)
        >>> log.admit(config)
        >>> log.admit(config)
        Traceback (most recent call last):
        ...
        secagg.errors.ReplayedSession: server: session ... was joined before...
    """

    def __init__(self) -> None:
        self._sessions: set[bytes] = set()
        self._last_round: int | None = None

    @property
    def last_round(self) -> int | None:
        """The round index of the last session joined, or None."""
        return self._last_round

    def __len__(self) -> int:
        return len(self._sessions)

    def check(self, config: SecAggConfig) -> None:
        """Raise if ``config``'s session may not be joined; change nothing.

        Raises:
            ReplayedSession: the session id was joined before, or its round is not after the
                last round joined.
        """
        if config.session_id in self._sessions:
            raise ReplayedSession(
                f"session {config.session_id.hex()[:16]}... was joined before; a client joins "
                "each session once",
                sender=0,
            )
        if self._last_round is not None and config.round_index <= self._last_round:
            raise ReplayedSession(
                f"round {config.round_index} is not after round {self._last_round}, the last "
                "one this client joined; rounds only move forward",
                sender=0,
            )

    def admit(self, config: SecAggConfig) -> None:
        """Record ``config``'s session as joined (after :meth:`check`)."""
        self.check(config)
        self._sessions.add(config.session_id)
        self._last_round = config.round_index

    def to_bytes(self) -> bytes:
        """JSON with hex session ids (never pickle)."""
        return json.dumps(
            {"sessions": sorted(s.hex() for s in self._sessions), "last_round": self._last_round}
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionLog:
        """Parse :meth:`to_bytes` output.

        Raises:
            LocalProtocolError: the bytes are not a session log.
        """
        log = cls()
        try:
            values = json.loads(data)
            sessions = {bytes.fromhex(s) for s in values["sessions"]}
            last = values["last_round"]
            if any(len(s) != SESSION_ID_BYTES for s in sessions) or not (
                last is None or (type(last) is int and last >= 0)
            ):
                raise ValueError("bad field")
        except (KeyError, TypeError, ValueError) as error:
            raise LocalProtocolError(f"the saved session log is unreadable ({error})") from None
        log._sessions, log._last_round = sessions, last
        return log
