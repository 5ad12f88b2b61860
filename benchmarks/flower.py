"""One round on Flower's simulation engine: this project's protocol, Flower's own SecAgg+, and
plaintext FedAvg, with the same clients, vector size and dropouts.

    python -m benchmarks.flower [--clients 50] [--dim 100000] [--dropout 0.1]

Prints one JSON object per configuration. Every configuration runs in its own process on the Ray
backend. Clients add a fixed update to the model ("training" costs nothing), so the time is the
engine plus the aggregation. ``round_seconds`` is measured inside the ServerApp, from the first
message of the round to the updated model. Dropouts: the chosen clients vanish after sharing
their keys (they never send their masked input / their update). The "small" configurations give
each client 6 neighbours and threshold 3 on both sides (Flower: num_shares=7, which counts the
owner); "complete" uses every client and the threshold privagg recommends, on both sides.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

# the same share holders on both sides: k neighbours + the owner = Flower's num_shares
SMALL_NEIGHBOURS, SMALL_THRESHOLD = 6, 3


def COMPLETE_THRESHOLD(clients: int) -> int:
    """The threshold privagg recommends for the complete graph (SECURITY.md), used on both sides."""
    import secagg

    return secagg.SecAggConfig.create(range(1, clients + 1), 1, neighbours=clients - 1).threshold


CONFIGS = [
    "privagg-small",
    "flower-secaggplus-small",
    "privagg-complete",
    "flower-secaggplus-complete",
    "plaintext-fedavg",
]


def _dropped(partition: int, clients: int, dropout: float) -> bool:
    return partition < round(dropout * clients)


def run(name: str, clients: int, dim: int, dropout: float) -> dict:
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fl.engines.flower import PrivaggWorkflow, privagg_mod

    delta = np.full(dim, 0.01, dtype=np.float32)
    timing = {}
    server_app = ServerApp()
    if name.startswith("privagg"):
        complete = name.endswith("complete")

        client_app = ClientApp(mods=[privagg_mod])  # dropouts are injected by the workflow

        @client_app.train()
        def train(msg: Message, context: Context) -> Message:
            array = msg.content.array_records["arrays"]["x"].numpy()
            return Message(
                RecordDict(
                    {
                        "arrays": ArrayRecord({"x": Array(array + delta)}),
                        "metrics": MetricRecord({"num-examples": 10}),
                    }
                ),
                reply_to=msg,
            )

        @server_app.main()
        def main(grid: Grid, context: Context) -> None:
            workflow = PrivaggWorkflow(
                min_nodes=clients,
                neighbours=clients - 1 if complete else SMALL_NEIGHBOURS,
                threshold=COMPLETE_THRESHOLD(clients) if complete else SMALL_THRESHOLD,
            )
            nodes = workflow.wait_for_nodes(grid)
            count = round(dropout * clients)
            workflow.dropouts = dict.fromkeys(nodes[:count], "masked-input")
            started = time.perf_counter()
            workflow.run_round(grid, ArrayRecord({"x": Array(np.zeros(dim, np.float32))}), 1)
            timing["round_seconds"] = time.perf_counter() - started
            timing["contributors"] = len(workflow.reports[-1].contributors)
    else:

        class Client(NumPyClient):
            def __init__(self, partition: int) -> None:
                self.partition = partition

            def fit(self, parameters, config):
                if _dropped(self.partition, clients, dropout) and name == "plaintext-fedavg":
                    raise RuntimeError("dropped out")
                return [parameters[0] + delta], 10, {}

        def client_fn(context: Context):
            return Client(int(context.node_config["partition-id"])).to_client()

        def drop_secagg(msg: Message, context: Context, call_next):
            stage = msg.content.config_records.get("secaggplus_configs", {}).get("stage")
            if stage == "collect_masked_vectors" and _dropped(
                int(context.node_config["partition-id"]), clients, dropout
            ):
                raise RuntimeError("dropped out")
            return secaggplus_mod(msg, context, call_next)

        mods = [drop_secagg] if name.startswith("flower-secaggplus") else []
        client_app = ClientApp(client_fn=client_fn, mods=mods)

        @server_app.main()
        def main(grid: Grid, context: Context) -> None:
            strategy = FedAvg(
                fraction_fit=1.0,
                fraction_evaluate=0.0,
                min_fit_clients=clients,
                min_available_clients=clients,
                initial_parameters=ndarrays_to_parameters([np.zeros(dim, np.float32)]),
            )
            legacy = LegacyContext(
                context=context, config=ServerConfig(num_rounds=1), strategy=strategy
            )
            if name == "flower-secaggplus-small":
                fit = SecAggPlusWorkflow(
                    num_shares=SMALL_NEIGHBOURS + 1, reconstruction_threshold=SMALL_THRESHOLD
                )
            elif name == "flower-secaggplus-complete":
                fit = SecAggPlusWorkflow(
                    num_shares=clients, reconstruction_threshold=clients // 2 + 2
                )
            else:
                fit = None
            workflow = DefaultWorkflow(fit_workflow=fit) if fit is not None else DefaultWorkflow()
            while len(grid.get_node_ids()) < clients:
                time.sleep(0.5)
            started = time.perf_counter()
            workflow(grid, legacy)
            timing["round_seconds"] = time.perf_counter() - started

    run_simulation(
        server_app,
        client_app,
        num_supernodes=clients,
        backend_config={"client_resources": {"num_cpus": 1}},
    )
    return {
        "name": name,
        "clients": clients,
        "dim": dim,
        "dropout": dropout,
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in timing.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--dim", type=int, default=100_000)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--only", choices=CONFIGS)
    args = parser.parse_args(argv)
    if args.only:
        print(json.dumps(run(args.only, args.clients, args.dim, args.dropout)), flush=True)
        return 0
    for name in CONFIGS:
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.flower",
                "--only",
                name,
                "--clients",
                str(args.clients),
                "--dim",
                str(args.dim),
                "--dropout",
                str(args.dropout),
            ],
            capture_output=True,
            text=True,
        )
        lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
        print(
            lines[-1]
            if lines
            else json.dumps({"name": name, "error": completed.stderr.strip().splitlines()[-1:]}),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
