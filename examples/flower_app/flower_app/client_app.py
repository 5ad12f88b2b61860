"""ClientApp: ordinary local training, wrapped by privagg's secure-aggregation mod."""

from __future__ import annotations

import logging

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import secagg
from fl.engines.flower import make_privagg_mod, policy_from_node_config, without_identities


def node_policy(context: Context) -> secagg.ClientPolicy:
    """Across a network a node requires identities: give it ``privagg-key`` and
    ``privagg-allowlist`` in its node config (SECURITY.md). Flower's simulation gives nodes no
    config of their own, so a node without a key runs without identities, and says so."""
    if "privagg-key" in context.node_config:
        return policy_from_node_config(context)
    logging.getLogger("privagg.flower").warning(
        "node %s runs without identities (no privagg-key in its node config): only the "
        "semi-honest guarantee holds",
        context.node_id,
    )
    return without_identities(context)


app = ClientApp(mods=[make_privagg_mod(policy=node_policy)])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train from the global model on this node's partition; the mod masks the update."""
    import torch  # only training needs torch: the protocol's other messages stay light

    from fl.core.params import to_vector
    from fl.core.training import train_locally
    from flower_app import task

    partition = int(context.node_config["partition-id"])
    partitions = int(context.node_config["num-partitions"])
    x, y = task.examples(partitions, partition)
    module = task.model()
    task.load_arrays(module, msg.content.array_records["arrays"])
    config = msg.content.config_records["config"]
    result = train_locally(
        module,
        to_vector(module),
        x,
        y,
        training=task.training(int(config["local-epochs"]), float(config["learning-rate"])),
        generator=torch.Generator().manual_seed(partition),
        device=torch.device("cpu"),
    )
    reply = RecordDict(
        {
            "arrays": task.to_arrays(module),
            "metrics": MetricRecord({"num-examples": len(y), "loss": result.loss}),
        }
    )
    return Message(reply, reply_to=msg)
