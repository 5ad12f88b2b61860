"""A Flower Grid that delivers every message to a ClientApp in this process (no Ray, no gRPC).

The workflow and the mod run unchanged; each node keeps its own Context (node config and
state) across messages, as a SuperNode does. For fast, deterministic tests of what crosses
the wire between PrivaggWorkflow and privagg_mod.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity


class InlineGrid:
    """The Grid interface PrivaggWorkflow uses: node ids, and send_and_receive."""

    def __init__(self, app: ClientApp, node_configs: Mapping[int, dict]) -> None:
        TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1
        self.app = app
        self.contexts = {
            node: Context(
                run_id=1, node_id=node, node_config=dict(config), state=RecordDict(), run_config={}
            )
            for node, config in node_configs.items()
        }
        self.error_reasons: list[str] = []

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            reply = self.app(message, self.contexts[node])
            if reply.has_error():
                self.error_reasons.append(reply.error.reason)
            replies.append(reply)
        return replies


def partition_configs(count: int, **extra: object) -> dict[int, dict]:
    """Node id -> node config with ``partition-id`` (node ids 101, 102, ...)."""
    return {
        100 + i + 1: {"partition-id": i, "num-partitions": count, **extra} for i in range(count)
    }


class AsyncInlineGrid(InlineGrid):
    """An InlineGrid that also pushes and pulls: a pushed message is answered ``delay(node)``
    pulls later (each pull is one tick), so nodes finish at different times, deterministically;
    ``send_and_receive`` stays immediate (the protocol's phases)."""

    def __init__(
        self, app: ClientApp, node_configs: Mapping[int, dict], delay: Callable[[int], int]
    ) -> None:
        super().__init__(app, node_configs)
        self.delay = delay
        self.tick = 0
        self.queued: dict[str, tuple[int, Message]] = {}
        self.pushed: list[Message] = []

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message in messages:
            message_id = uuid.uuid4().hex
            message.metadata.__dict__["_message_id"] = message_id
            self.queued[message_id] = (
                self.tick + self.delay(message.metadata.dst_node_id),
                message,
            )
            self.pushed.append(message)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        self.tick += 1
        due = sorted(
            (ready, message_id)
            for message_id, (ready, _) in self.queued.items()
            if message_id in set(message_ids) and ready <= self.tick
        )
        replies = []
        for _, message_id in due:
            _, message = self.queued.pop(message_id)
            node = message.metadata.dst_node_id
            replies.append(self.app(message, self.contexts[node]))
        return replies
