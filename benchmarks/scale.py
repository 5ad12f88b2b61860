"""The in-process engine at scale: rounds per minute with 1,000 clients per round, in one process
and in worker processes (fl.engines.pool).

    python -m benchmarks.scale [--clients 10000] [--per-round 1000] [--rounds 3] [--workers 1,2]
                               [--data synthetic] [--dp none|client] [--epsilon 4]
                               [--noise-multiplier Z] [--dropout P] [--identities]

Prints one JSON object per worker count: accuracy and epsilon per round, seconds per round (each round, and the mean over the
rounds after the first, which also pays for the workers' first use), rounds per minute, the
pool's start, the peak resident memory of this process (a worker's is not measured here:
the kernel's figure for children counts the parent's pages a child had before it
executed), and the load
average before and after (the machine may be shared: compare numbers taken at similar loads).

Data: ``--data synthetic`` is the seeded Gaussian mixture (64 features, IID split, 8 training
examples per client on average); ``--data synthetic:ALPHA,BETA`` is Synthetic(alpha, beta) of
the FedProx paper (power-law client sizes, each client's examples generated when it is sampled).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import tempfile
import time


def _data_settings(data: str, clients: int) -> dict:
    if data == "synthetic":
        samples = max(3000, 32 * clients // 3)  # 8 training examples per client after the test
        return {
            "data.dataset": "synthetic",
            "data.partition": "iid",
            "data.synthetic_samples": samples,
        }
    if data.startswith("synthetic:"):
        from fl.core.config import RunConfig
        from fl.core.synthetic import client_size

        alpha, beta = (float(v) for v in data.split(":", 1)[1].split(","))
        seed = RunConfig().seed
        # FedAvg weighs a client by its example count, and the sizes follow a power law
        largest = max(client_size(u, seed=seed) for u in range(1, clients + 1))
        return {
            "secure.max_weight": largest,
            "data.dataset": "fedprox-synthetic",
            "data.synthetic_alpha": alpha,
            "data.synthetic_beta": beta,
        }
    raise SystemExit(f"--data must be synthetic or synthetic:ALPHA,BETA, got {data}")


def run(args: argparse.Namespace, workers: int) -> dict:
    from fl.core.config import RunConfig
    from fl.engines.inprocess import run_federation

    out = tempfile.mkdtemp(prefix="privagg-scale-")
    settings = {
        "training.clients": args.clients,
        "training.per_round": args.per_round,
        "training.rounds": args.rounds,
        "training.local_epochs": 1,
        "secure.dropout": args.dropout,
        "secure.identities": args.identities,
        "out": os.path.join(out, "run"),
        **_data_settings(args.data, args.clients),
    }
    if args.dp == "client":
        settings.update(
            {
                "privacy.level": "client",
                "privacy.delta": args.delta,
                "training.fraction": args.per_round / args.clients,
            }
        )
        if args.noise_multiplier is not None:  # a calibration already made, not repeated
            settings["privacy.noise_multiplier"] = args.noise_multiplier
        else:
            settings["privacy.epsilon"] = args.epsilon
        del settings["training.per_round"]
    config = RunConfig().with_overrides(settings)
    load_before = os.getloadavg()
    started = time.perf_counter()
    marks: list[float] = []
    first: list[float] = []

    def on_start(_start: object) -> None:
        first.append(time.perf_counter())

    try:
        result = run_federation(
            config,
            workers=workers,
            on_start=on_start,
            on_round=lambda _m: marks.append(time.perf_counter()),
        )
        ledger = os.path.join(out, "run", "privacy.json")
        entries = []
        if os.path.exists(ledger):
            with open(ledger) as file:
                entries = json.load(file).get("client_entries", [])
    finally:
        shutil.rmtree(out, ignore_errors=True)
    ends = [first[0], *marks]
    rounds = [b - a for a, b in itertools.pairwise(ends)]
    steady = rounds[1:] or rounds
    mean = sum(steady) / len(steady)
    history = result.history
    return {
        "workers": result.summary["workers"],
        "clients": args.clients,
        "per_round": args.per_round,
        "data": args.data,
        "dp": args.dp,
        "identities": args.identities,
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "setup_seconds": round(first[0] - started, 2),
        "round_seconds": [round(s, 2) for s in rounds],
        "mean_round_seconds_after_first": round(mean, 2),
        "rounds_per_minute": round(60 / mean, 2),
        "accuracy": [round(m.accuracy, 4) for m in history],
        "epsilon": [m.epsilon for m in history],
        "epsilon_against_observers": result.summary.get("epsilon_against_observers"),
        "sampled": [m.sampled for m in history],
        "failed_rounds": sum(m.failed for m in history),
        "dropped": [m.dropped for m in history],
        # client level: the noise variance left in each released sum over the target (exact
        # noise: about 1; without removal: the survivors over t - c)
        "variance_left_over_target": [
            round(e["variance_left"] / e["variance"], 4)
            for e in entries
            if e.get("variance_left") is not None
        ],
        "peak_rss_mib_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--per-round", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument(
        "--identities",
        action="store_true",
        help="signed keys and the consistency check (client level: exact noise under dropouts, "
        "each client answering the noise-removal request from its worker)",
    )
    parser.add_argument("--dp", choices=["none", "client"], default="none")
    parser.add_argument("--epsilon", type=float, default=4.0)
    parser.add_argument("--delta", type=float, default=1e-6)
    parser.add_argument(
        "--noise-multiplier",
        type=float,
        help="client level: this noise instead of calibrating for --epsilon (e.g. the z a "
        "100-round calibration gave, to time a few of its rounds)",
    )
    args = parser.parse_args()
    for workers in (int(w) for w in args.workers.split(",")):
        print(json.dumps(run(args, workers)), flush=True)


if __name__ == "__main__":
    main()
