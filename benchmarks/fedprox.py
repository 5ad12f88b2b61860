"""FedProx against FedAvg on Synthetic(1,1) with stragglers (Li et al., MLSys 2020, Fig. 1).

    python -m benchmarks.fedprox [--rounds 200] [--stragglers 0.9] [--jobs 2]
                                 [--plot benchmarks/figures/fedprox_synthetic.png]

The paper's setting: Synthetic(1,1) with 30 clients, 10 sampled per round, multinomial logistic
regression, SGD with learning rate 0.01, batch 10, E = 20 local epochs, 10% of each client's
data held out. A fraction of each round's cohort straggles (drawn from the seed, the same
clients for every method): FedAvg drops them; FedProx averages their partial work (1 to 19
epochs), with mu = 0 and with mu = 1. Aggregation in the clear and no dropouts, as in the paper
(it studies optimisation; secure aggregation gives the same means up to 2^-16).

This project refuses a round of fewer than ``training.min_clients`` (at least 2) clients: a
"mean" of one update is that update. With 90% stragglers FedAvg keeps 1 of its 10 clients, so
none of its rounds releases (the plot's legend says how many did); the paper's FedAvg averages
that one client. Run ``--stragglers 0.5`` to compare with FedAvg on rounds it can release.

Per round: the training loss of the global model (the weighted objective f(w) = sum_k p_k F_k(w)
over all training examples, as the paper plots) and the test accuracy. Prints one JSON object
per method (final and best values, and the rounds run) and writes one PNG with both panels.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

METHODS = (
    ("FedAvg (stragglers dropped)", {"algorithm.name": "fedavg"}),
    ("FedProx, mu = 0", {"algorithm.name": "fedprox", "algorithm.mu": 0.0}),
    ("FedProx, mu = 1", {"algorithm.name": "fedprox", "algorithm.mu": 1.0}),
)


def paper_config(rounds: int, stragglers: float, seed: int, out: str) -> dict:
    """The configuration overrides of the paper's Synthetic(1,1) experiment."""
    return {
        "data.dataset": "fedprox-synthetic",
        "data.synthetic_alpha": 1.0,
        "data.synthetic_beta": 1.0,
        "data.test_fraction": 0.1,
        "model.name": "logistic",
        "training.clients": 30,
        "training.per_round": 10,
        "training.min_clients": 2,
        "training.rounds": rounds,
        "training.local_epochs": 20,
        "training.batch_size": 10,
        "training.learning_rate": 0.01,
        "algorithm.stragglers": stragglers,
        "secure.enabled": False,
        "secure.dropout": 0.0,
        "seed": seed,
        "device": "cpu",
        "out": out,
    }


def run_method(args: tuple[str, dict, int, float, int]) -> dict:
    """Train one method; the per-round training loss and test accuracy."""
    import torch
    from torch import nn

    from fl.core.config import RunConfig
    from fl.core.data import synthetic_federation
    from fl.core.models import build_model
    from fl.engines.inprocess import run_federation

    torch.set_num_threads(1)
    label, overrides, rounds, stragglers, seed = args
    with tempfile.TemporaryDirectory() as folder:
        config = RunConfig().with_overrides(
            {**paper_config(rounds, stragglers, seed, f"{folder}/run"), **overrides}
        )
        # every client's training examples in memory: the training loss is taken over all
        data = synthetic_federation(config.data, clients=config.training.clients, seed=seed)
        torch.manual_seed(seed)
        model = build_model(config.model, features=data.num_features, classes=data.num_classes)
        features, labels = torch.as_tensor(data.train_x), torch.as_tensor(data.train_y)
        losses: list[float] = []

        def on_round(_metrics: object) -> None:
            with torch.no_grad():
                losses.append(float(nn.functional.cross_entropy(model(features), labels)))

        result = run_federation(config, model=model, on_round=on_round)
    accuracy = [m.accuracy for m in result.history]
    return {
        "method": label,
        "rounds": rounds,
        "released_rounds": sum(not m.failed for m in result.history),
        "stragglers": stragglers,
        "train_loss": losses,
        "test_accuracy": accuracy,
        "final_train_loss": losses[-1],
        "final_accuracy": accuracy[-1],
        "best_accuracy": max(accuracy),
        "mean_accuracy_last_20": sum(accuracy[-20:]) / len(accuracy[-20:]),
    }


def plot(results: list[dict], path: Path) -> None:
    """Training loss and test accuracy against the round, one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for result in results:
        rounds = range(1, len(result["train_loss"]) + 1)
        label = result["method"]
        if result["released_rounds"] < result["rounds"]:  # rounds left with too few clients
            label += f" ({result['released_rounds']} of {result['rounds']} rounds released)"
        left.plot(rounds, result["train_loss"], label=label)
        right.plot(rounds, [100 * a for a in result["test_accuracy"]], label=label)
    stragglers = results[0]["stragglers"]
    left.set(xlabel="round", ylabel="training loss", yscale="log")
    right.set(xlabel="round", ylabel="test accuracy (%)")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    right.legend()
    figure.suptitle(
        f"Synthetic(1,1), {100 * stragglers:.0f}% stragglers, 10 of 30 clients per round"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--stragglers", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--plot", type=Path, default=Path("benchmarks/figures/fedprox_synthetic.png")
    )
    args = parser.parse_args()
    tasks = [(label, o, args.rounds, args.stragglers, args.seed) for label, o in METHODS]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        results = list(pool.map(run_method, tasks))
    for result in results:
        summary = {k: v for k, v in result.items() if k not in ("train_loss", "test_accuracy")}
        print(json.dumps(summary))
    plot(results, args.plot)
    print(json.dumps({"plot": str(args.plot)}))


if __name__ == "__main__":
    main()
