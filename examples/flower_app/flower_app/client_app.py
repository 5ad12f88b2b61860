"""ClientApp: ordinary local training, wrapped by privagg's secure-aggregation mod."""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl.engines.flower import privagg_mod

app = ClientApp(mods=[privagg_mod])


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
