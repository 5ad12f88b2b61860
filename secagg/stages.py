"""Protocol phases, message kinds, party stages, and the one table of which message is legal when."""

from __future__ import annotations

from enum import Enum, IntEnum

__all__ = [
    "CLIENT_TRANSITIONS",
    "SERVER_COLLECTS",
    "ClientStage",
    "MessageType",
    "Phase",
    "ServerStage",
    "server_next_stage",
]


class Phase(Enum):
    """The rounds of the protocol (Bonawitz et al. 2017, Fig. 4), in order.

    A client that *drops out in* a phase sends nothing from that phase on.
    """

    ADVERTISE_KEYS = "advertise-keys"
    SHARE_KEYS = "share-keys"
    MASKED_INPUT = "masked-input"
    CONSISTENCY_CHECK = "consistency-check"
    UNMASK = "unmask"


class MessageType(IntEnum):
    """Wire tag of each message; odd values flow client -> server, even values server -> client."""

    ADVERTISE_KEYS = 1
    KEY_ROSTER = 2
    SHARE_KEYS = 3
    SHARE_BUNDLE = 4
    MASKED_INPUT = 5
    CONSISTENCY_REQUEST = 6
    CONSISTENCY_SIGNATURE = 7
    UNMASK_REQUEST = 8
    UNMASK_RESPONSE = 9
    NOISE_REMOVAL_REQUEST = 10
    NOISE_REMOVAL_RESPONSE = 11

    @property
    def from_client(self) -> bool:
        """Whether clients send this kind of message."""
        return bool(self.value % 2)


class ClientStage(Enum):
    """Where a client is; ``ERROR`` is sticky."""

    NEW = "new"
    KEYS_ADVERTISED = "keys-advertised"
    KEYS_SHARED = "keys-shared"
    INPUT_MASKED = "input-masked"
    CONSISTENCY_SIGNED = "consistency-signed"
    DONE = "done"
    ERROR = "error"


class ServerStage(Enum):
    """What the server is collecting; ``DONE`` and ``FAILED`` are final."""

    COLLECTING_KEYS = "collecting-keys"
    COLLECTING_SHARES = "collecting-shares"
    COLLECTING_INPUTS = "collecting-inputs"
    COLLECTING_SIGNATURES = "collecting-signatures"
    COLLECTING_UNMASK = "collecting-unmask"
    DONE = "done"
    FAILED = "failed"


# (client stage, server message) -> (next stage, identities required: True / False / None = any)
CLIENT_TRANSITIONS: dict[tuple[ClientStage, MessageType], tuple[ClientStage, bool | None]] = {
    (ClientStage.KEYS_ADVERTISED, MessageType.KEY_ROSTER): (ClientStage.KEYS_SHARED, None),
    (ClientStage.KEYS_SHARED, MessageType.SHARE_BUNDLE): (ClientStage.INPUT_MASKED, None),
    (ClientStage.INPUT_MASKED, MessageType.CONSISTENCY_REQUEST): (
        ClientStage.CONSISTENCY_SIGNED,
        True,
    ),
    (ClientStage.INPUT_MASKED, MessageType.UNMASK_REQUEST): (ClientStage.DONE, False),
    (ClientStage.CONSISTENCY_SIGNED, MessageType.UNMASK_REQUEST): (ClientStage.DONE, True),
}

# server stage -> (client message it accepts, the phase it belongs to)
SERVER_COLLECTS: dict[ServerStage, tuple[MessageType, Phase]] = {
    ServerStage.COLLECTING_KEYS: (MessageType.ADVERTISE_KEYS, Phase.ADVERTISE_KEYS),
    ServerStage.COLLECTING_SHARES: (MessageType.SHARE_KEYS, Phase.SHARE_KEYS),
    ServerStage.COLLECTING_INPUTS: (MessageType.MASKED_INPUT, Phase.MASKED_INPUT),
    ServerStage.COLLECTING_SIGNATURES: (
        MessageType.CONSISTENCY_SIGNATURE,
        Phase.CONSISTENCY_CHECK,
    ),
    ServerStage.COLLECTING_UNMASK: (MessageType.UNMASK_RESPONSE, Phase.UNMASK),
}


def server_next_stage(stage: ServerStage, *, identities: bool) -> ServerStage:
    """The stage that follows ``stage`` once its phase closes successfully."""
    order = [
        ServerStage.COLLECTING_KEYS,
        ServerStage.COLLECTING_SHARES,
        ServerStage.COLLECTING_INPUTS,
        *([ServerStage.COLLECTING_SIGNATURES] if identities else []),
        ServerStage.COLLECTING_UNMASK,
        ServerStage.DONE,
    ]
    return order[order.index(stage) + 1]
