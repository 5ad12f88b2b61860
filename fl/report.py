"""What a run writes: a line of metrics per round, a summary, and the training plot."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["RoundMetrics", "append_metrics", "plot_training", "read_metrics", "write_summary"]

METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class RoundMetrics:
    """One completed round.

    Attributes:
        round: 1-based round number.
        accuracy, loss: the global model on the test set after the round.
        sampled: clients in the cohort; dropped: those whose update is not in the mean.
        bytes_up, bytes_down: traffic of the aggregation (clients to server, server to clients).
        secagg_seconds: encoding, protocol and decoding wall time (0 without secure aggregation).
        train_seconds: local training, summed over the cohort.
        failed: nothing was aggregated (too many dropouts, or too small a cohort); the model is
            unchanged and no privacy was spent.
        epsilon: privacy spent so far (the worst client at sample level), if DP is on.
    """

    round: int
    accuracy: float
    loss: float
    sampled: int
    dropped: int
    bytes_up: int
    bytes_down: int
    secagg_seconds: float
    train_seconds: float
    failed: bool = False
    epsilon: float | None = None


def append_metrics(folder: Path, metrics: RoundMetrics) -> None:
    """Append one JSON line to ``metrics.jsonl``."""
    with open(folder / METRICS_FILE, "a") as handle:
        handle.write(json.dumps(asdict(metrics)) + "\n")


def read_metrics(folder: Path, *, up_to_round: int) -> list[RoundMetrics]:
    """Rounds 1..up_to_round from ``metrics.jsonl``, rewriting the file without later lines
    (a round interrupted after its metrics were written but before its checkpoint)."""
    path = folder / METRICS_FILE
    if not path.is_file():
        return []
    rows = [
        RoundMetrics(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()
    ]
    kept = [row for row in rows if row.round <= up_to_round]
    path.write_text("".join(json.dumps(asdict(row)) + "\n" for row in kept))
    return kept


def write_summary(folder: Path, summary: dict) -> None:
    """Write ``summary.json``."""
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def plot_training(folder: Path, history: list[RoundMetrics], *, title: str) -> Path:
    """Write ``training.png``: test accuracy and loss per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [m.round for m in history]
    figure, (accuracy_axis, loss_axis) = plt.subplots(
        1, 2, figsize=(10, 4), constrained_layout=True
    )
    accuracy_axis.plot(rounds, [100 * m.accuracy for m in history], marker="o", color="tab:blue")
    accuracy_axis.set(xlabel="round", ylabel="test accuracy (%)", title="accuracy")
    accuracy_axis.grid(alpha=0.3)
    loss_axis.plot(rounds, [m.loss for m in history], marker="o", color="tab:red")
    loss_axis.set(xlabel="round", ylabel="test loss (cross-entropy)", title="loss")
    loss_axis.grid(alpha=0.3)
    failed = [m.round for m in history if m.failed]
    for axis in (accuracy_axis, loss_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        for r in failed:
            axis.axvline(r, color="grey", linestyle=":", linewidth=1)
    figure.suptitle(title)
    path = folder / "training.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
