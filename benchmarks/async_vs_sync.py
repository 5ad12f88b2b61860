"""Buffered asynchronous secure aggregation against synchronous FedAvg, on the simulated clock.

    python -m benchmarks.async_vs_sync [--clients 100] [--updates 3000] [--epochs 5] [--target 0.8]
                                       [--plot benchmarks/figures/async_vs_sync.png]

Synthetic(1,1) (Li et al. 2020) over ``--clients`` clients, multinomial logistic regression,
``--epochs`` local epochs of SGD (batch 10, learning rate 0.01), secure aggregation on (this project's
protocol, no dropouts). Every client has a lognormal speed (sigma 1, seeded: a slow device is
slow every time, as in Nguyen et al. 2022's simulations). Both methods consume the same number
of client updates (``--updates``):

* synchronous FedAvg: 10 clients per round; a round lasts as long as its slowest client (the
  stragglers of a lognormal spread set the pace);
* asynchronous (FedBuff): 20 clients train at once, each on the model it pulled; every 10
  arrivals form one secure-aggregation session among those 10, whose clients weigh their
  updates by 1/sqrt(1 + staleness) before masking.

Prints one JSON object per method (simulated seconds to reach ``--target`` test accuracy, and
50%, 60% and 70%, or null; the best accuracy and the simulated time of the last update) and
writes one PNG of test accuracy against simulated time, with the curves beside it as JSON. The clock is simulated (fl.core.speeds): nothing here depends
on this machine's speed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

PER_SESSION = 10
CONCURRENCY = 20


def methods(updates: int) -> tuple[tuple[str, dict], ...]:
    """(label, overrides) per method; each consumes ``updates`` client updates."""
    rounds = max(1, updates // PER_SESSION)
    return (
        (
            f"synchronous FedAvg ({PER_SESSION} per round)",
            {"schedule.mode": "sync", "training.rounds": rounds},
        ),
        (
            f"asynchronous (K = {PER_SESSION}, C = {CONCURRENCY})",
            {
                "schedule.mode": "async",
                "schedule.buffer": PER_SESSION,
                "schedule.concurrency": CONCURRENCY,
                "training.rounds": rounds,
            },
        ),
    )


def base_config(clients: int, epochs: int, seed: int, out: str) -> dict:
    """The overrides both methods share."""
    return {
        "data.dataset": "fedprox-synthetic",
        "data.synthetic_alpha": 1.0,
        "data.synthetic_beta": 1.0,
        "data.test_fraction": 0.1,
        "model.name": "logistic",
        "training.clients": clients,
        "training.per_round": PER_SESSION,
        "training.local_epochs": epochs,
        "training.batch_size": 10,
        "training.learning_rate": 0.01,
        "secure.enabled": True,
        "secure.dropout": 0.0,
        "schedule.speed_sigma": 1.0,
        "seed": seed,
        "device": "cpu",
        "out": out,
    }


def run_method(args: tuple[str, dict, int, int, int, float]) -> dict:
    """Train one method; test accuracy against simulated time."""
    import torch

    from fl.core.config import RunConfig
    from fl.engines.inprocess import run_federation

    torch.set_num_threads(1)
    label, overrides, clients, epochs, seed, target = args
    with tempfile.TemporaryDirectory() as folder:
        config = RunConfig().with_overrides(
            {**base_config(clients, epochs, seed, f"{folder}/run"), **overrides}
        )
        result = run_federation(config)
    times = [m.simulated_time for m in result.history]
    accuracy = [m.accuracy for m in result.history]
    thresholds = sorted({0.5, 0.6, 0.7, target})
    reached = {
        f"{100 * level:g}%": next(
            (t for t, a in zip(times, accuracy, strict=True) if a >= level), None
        )
        for level in thresholds
    }
    return {
        "method": label,
        "server_updates": len(times),
        "target_accuracy": target,
        "seconds_to_target": reached[f"{100 * target:g}%"],
        "seconds_to_accuracy": reached,
        "best_accuracy": max(accuracy),
        "final_accuracy": accuracy[-1],
        "last_update_seconds": times[-1],
        "times": times,
        "accuracy": accuracy,
    }


def plot(results: list[dict], path: Path, target: float) -> None:
    """Test accuracy against simulated time, one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.2), constrained_layout=True)
    for result in results:
        axis.plot(result["times"], [100 * a for a in result["accuracy"]], label=result["method"])
    axis.axhline(100 * target, color="grey", linestyle=":", label=f"{100 * target:.0f}% target")
    axis.set(xlabel="simulated time (s)", ylabel="test accuracy (%)", xscale="log")
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title("Synthetic(1,1), lognormal client speeds, secure aggregation")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--updates", type=int, default=3000, help="client updates per method")
    parser.add_argument("--epochs", type=int, default=5, help="local epochs per update")
    parser.add_argument("--target", type=float, default=0.8, help="test accuracy to reach")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/figures/async_vs_sync.png"))
    args = parser.parse_args()
    tasks = [
        (label, overrides, args.clients, args.epochs, args.seed, args.target)
        for label, overrides in methods(args.updates)
    ]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        results = list(pool.map(run_method, tasks))
    for result in results:
        print(json.dumps({k: v for k, v in result.items() if k not in ("times", "accuracy")}))
    plot(results, args.plot, args.target)
    curves = args.plot.with_suffix(".json")
    curves.write_text(json.dumps(results) + "\n")
    print(json.dumps({"curves": str(curves)}))
    print(json.dumps({"plot": str(args.plot)}))


if __name__ == "__main__":
    main()
