"""DP-SGD training time: this project's private training against a bare Opacus loop.

    python -m benchmarks.dp [--epochs 5] [--repeats 5] [--device auto|cpu|cuda]

One JSON object per configuration: the reference CNN on all of scikit-learn's digits training
split, batch 64, the same noise and clipping; seconds per epoch (median over repeats, model and
PrivacyEngine setup included once per training, as a client pays it each round) for
non-private training, ``dp.local.train_privately``, and a bare Opacus loop on the same model and
batch; and this project's overhead over bare Opacus.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dp.local import train_privately
from fl.core.config import TrainingConfig
from fl.core.data import load_digits_arrays
from fl.core.models import CNN
from fl.core.params import to_vector
from fl.core.training import train_locally

BATCH, NOISE, CLIP, LR = 64, 1.0, 1.0, 0.1


def bare_opacus(
    model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, device: torch.device
) -> None:
    """The textbook Opacus loop (as in its tutorials) on a copy of the model."""
    local = copy.deepcopy(model).to(device)
    optimizer = torch.optim.SGD(local.parameters(), lr=LR)
    loader = DataLoader(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), batch_size=BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local, optimizer, loader = PrivacyEngine().make_private(
            module=local,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=NOISE,
            max_grad_norm=CLIP,
        )
        criterion = nn.CrossEntropyLoss()
        for _ in range(epochs):
            with BatchMemoryManager(
                data_loader=loader, max_physical_batch_size=BATCH, optimizer=optimizer
            ) as batches:
                for features, labels in batches:
                    features, labels = features.to(device), labels.to(device)
                    optimizer.zero_grad()
                    criterion(local(features), labels).backward()
                    optimizer.step()


def measure(functions: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each zero-argument function, interleaving them so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            started = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = parser.parse_args(argv)
    device = torch.device(
        "cuda"
        if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    x, y = load_digits_arrays()
    x, y = x[:1347], y[:1347]
    torch.manual_seed(0)
    model = CNN(10)
    training = TrainingConfig(local_epochs=args.epochs, batch_size=BATCH, learning_rate=LR)
    vector = to_vector(model)

    def plain() -> None:
        train_locally(
            copy.deepcopy(model),
            vector,
            x,
            y,
            training=training,
            generator=torch.Generator().manual_seed(0),
            device=device,
        )

    def project() -> None:
        train_privately(
            model,
            x,
            y,
            epochs=args.epochs,
            batch_size=BATCH,
            learning_rate=LR,
            momentum=0.0,
            noise_multiplier=NOISE,
            max_grad_norm=CLIP,
            max_physical_batch=BATCH,
            ghost_clipping=False,
            seed=0,
            device=device,
        )

    def bare() -> None:
        bare_opacus(model, x, y, args.epochs, device)

    for fn in (plain, project, bare):  # warm-up
        fn()
    medians = measure({"plain": plain, "privagg": project, "opacus": bare}, args.repeats)
    seconds = {name: value / args.epochs for name, value in medians.items()}
    print(
        json.dumps(
            {
                "model": "CNN (9,930 parameters)",
                "examples": len(y),
                "batch": BATCH,
                "epochs": args.epochs,
                "device": str(device),
                "torch_threads": torch.get_num_threads(),
                "non_private_epoch_seconds": round(seconds["plain"], 4),
                "privagg_dp_epoch_seconds": round(seconds["privagg"], 4),
                "bare_opacus_epoch_seconds": round(seconds["opacus"], 4),
                "privagg_overhead_over_opacus": round(
                    seconds["privagg"] / seconds["opacus"] - 1, 3
                ),
                "dp_slowdown_over_non_private": round(seconds["privagg"] / seconds["plain"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
