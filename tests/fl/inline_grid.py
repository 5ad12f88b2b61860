"""A Flower Grid that delivers every message to a ClientApp in this process (no Ray, no gRPC).

The workflow and the mod run unchanged; each node keeps its own Context (node config and
state) across messages, as a SuperNode does. For fast, deterministic tests of what crosses
the wire between PrivaggWorkflow and privagg_mod.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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
