"""ServerApp: FedAvg whose every round is one session of privagg's secure aggregation."""

from __future__ import annotations

import json
import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fl.engines.flower import PrivaggWorkflow
from flower_app import task
from secagg import ClientPolicy

app = ServerApp()
DEFAULTS = {
    "num-rounds": 3,
    "min-nodes": 5,
    "client-min-clients": 5,
    "local-epochs": 2,
    "learning-rate": 0.1,
    "result-path": "",
    "allowlist-path": "",
}


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured rounds, log the test accuracy, optionally write it as JSON."""
    config = {**DEFAULTS, **context.run_config}
    allowlist = None
    if config.get("allowlist-path"):  # the federation's identity keys, hex, one per line
        with open(str(config["allowlist-path"])) as handle:
            allowlist = frozenset(bytes.fromhex(line.strip()) for line in handle if line.strip())
    workflow = PrivaggWorkflow(
        num_rounds=int(config["num-rounds"]),
        min_nodes=int(config["min-nodes"]),
        # the floor the nodes hold (their node config privagg-min-clients; 5 by default)
        client_policy=ClientPolicy(
            min_clients=int(config["client-min-clients"]), require_identities=allowlist is not None
        ),
        allowlist=allowlist,
        train_config={
            "local-epochs": int(config["local-epochs"]),
            "learning-rate": float(config["learning-rate"]),
        },
    )
    nodes = workflow.wait_for_nodes(grid)
    arrays = task.to_arrays(task.model())
    history = []
    for round_number in range(1, workflow.num_rounds + 1):
        arrays = workflow.run_round(grid, arrays, round_number)
        accuracy, loss = task.evaluate(arrays, len(nodes))
        report = workflow.reports[-1]
        history.append(
            {
                "round": round_number,
                "accuracy": accuracy,
                "loss": loss,
                "contributors": len(report.contributors),
                "seconds": report.seconds,
            }
        )
        logging.getLogger("privagg.flower").warning(
            "round %d: accuracy %.3f, %d contributors",
            round_number,
            accuracy,
            len(report.contributors),
        )
    if config.get("result-path"):
        with open(str(config["result-path"]), "w") as handle:
            json.dump({"nodes": len(nodes), "history": history}, handle)
