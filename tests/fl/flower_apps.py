"""Flower apps for the tests: clients whose update is a known function of their node id."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import secagg
from fl.engines.flower import (
    FLOWER_RECORD,
    NodeIdentity,
    PolicyProvider,
    make_privagg_mod,
    without_identities,
)
from secagg.hazmat.signing import SigningKey

SHAPES = {"w": (3, 4), "b": (4,)}


def node_update(node_id: int) -> tuple[np.ndarray, int]:
    """The flat update and weight the client on ``node_id`` contributes."""
    generator = np.random.default_rng(node_id % (2**32))  # test data
    size = sum(int(np.prod(s)) for s in SHAPES.values())
    return generator.normal(0, 0.1, size), 10 + node_id % 50


def initial_arrays() -> ArrayRecord:
    return ArrayRecord({name: Array(np.zeros(shape, np.float32)) for name, shape in SHAPES.items()})


def _train(msg: Message, context: Context) -> Message:
    delta, weight = node_update(context.node_id)
    arrays, offset = {}, 0
    for name, array in msg.content.array_records["arrays"].items():
        values = array.numpy()
        arrays[name] = Array(
            (values.ravel() + delta[offset : offset + values.size])
            .reshape(values.shape)
            .astype(np.float32)
        )
        offset += values.size
    return Message(
        RecordDict(
            {"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": weight})}
        ),
        reply_to=msg,
    )


def make_client_app(
    *,
    without_mod: frozenset[int] = frozenset(),
    other_parameters: frozenset[int] = frozenset(),
    policy: PolicyProvider = without_identities,
    rounding_seed: str | None = None,
) -> ClientApp:
    """A ClientApp with the privagg mod; the nodes whose ``partition-id`` is in ``without_mod``
    lack it, those in ``other_parameters`` run the protocol with other parameters. The nodes
    hold ``policy`` (by default their node config's, less the identity requirement: these
    tests exercise other properties; tests/fl/test_flower_attacks.py checks the default).
    ``rounding_seed`` is set in each node's own config (``privagg-rounding-seed``: replays)."""
    privagg_mod = make_privagg_mod(policy=policy)

    def selective(
        msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        partition = int(context.node_config["partition-id"])
        if rounding_seed is not None:
            context.node_config["privagg-rounding-seed"] = rounding_seed
        if partition in without_mod:
            return call_next(msg, context)
        if partition in other_parameters and FLOWER_RECORD in msg.content.config_records:
            request = msg.content.config_records[FLOWER_RECORD]
            if "secagg-config" in request:
                config = secagg.SecAggConfig.decode(request["secagg-config"])
                request["secagg-config"] = secagg.SecAggConfig.create(
                    config.client_ids,
                    config.vector_length,
                    threshold=config.threshold,
                    neighbours=config.neighbours,
                    ring_bits=config.ring_bits,
                    session_id=config.session_id,
                    round_index=config.round_index,
                    contribution=config.contribution,
                ).encode()  # the input bound differs: another parameter set
        return privagg_mod(msg, context, call_next)

    app = ClientApp(mods=[selective])
    app.train()(_train)
    app.query()(_partition)
    return app


def _partition(msg: Message, context: Context) -> Message:
    partition = int(context.node_config["partition-id"])
    return Message(RecordDict({"partition": MetricRecord({"id": partition})}), reply_to=msg)


def partitions(grid, nodes: list[int]) -> dict[int, int]:
    """Ask each node for its ``partition-id`` (a query message the privagg mod passes through)."""
    messages = [
        Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes
    ]
    return {
        reply.metadata.src_node_id: int(reply.content.metric_records["partition"]["id"])
        for reply in grid.send_and_receive(messages)
    }


def identity_keys(count: int) -> list[SigningKey]:
    """Deterministic identity keys for partitions 0..count-1 (tests only)."""
    return [SigningKey(bytes([partition + 1]) * 32) for partition in range(count)]


def make_identity_client_app(count: int, *, impostor: int | None = None) -> ClientApp:
    """A ClientApp whose nodes hold identities; the ``impostor`` partition holds a key that is
    not on the allowlist."""
    allowlist = frozenset(
        k.public_bytes for k in identity_keys(count)
    )  # bytes: Ray pickles the app

    def identity(context: Context) -> NodeIdentity:
        partition = int(context.node_config["partition-id"])
        key = SigningKey(b"\xee" * 32) if partition == impostor else identity_keys(count)[partition]
        return NodeIdentity(key, allowlist)

    app = ClientApp(mods=[make_privagg_mod(identity)])
    app.train()(_train)
    app.query()(_partition)
    return app
