"""What a run writes: a line of metrics per round, a summary, and the training plot.

Every JSON file is strict JSON: a number that is not finite (a diverged loss) is written as
``null``, never as the ``NaN`` token most JSON readers refuse.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

__all__ = [
    "METRICS_FILE",
    "SUMMARY_FILE",
    "RoundMetrics",
    "append_metrics",
    "atomic_write",
    "json_safe",
    "plot_training",
    "read_summary",
    "reconcile_metrics",
    "write_metrics",
    "write_summary",
]

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a reader (or a crash) sees the old or the new
    content, never a mix: write a temporary file, flush it to disk, rename it over ``path``."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON ``null``), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


@dataclass(frozen=True)
class RoundMetrics:
    """One completed round.

    Attributes:
        round: 1-based round number.
        accuracy, loss: the global model on the test set after the round (NaN if not finite;
            written as null).
        sampled: clients in the cohort.
        dropped: sampled clients whose update is not in the mean: those that dropped out of the
            protocol before their masked input counted, and those left out for a non-finite
            update. In a failed round, the clients that really dropped out (not the cohort).
        bytes_up, bytes_down: traffic of the aggregation (clients to server, server to clients);
            None when the protocol aborted before reporting it (a failed secure round).
        secagg_seconds: encoding, protocol and decoding wall time (0 without secure aggregation).
        train_seconds: local training, summed over the cohort.
        failed: nothing was aggregated (too many dropouts, or too small a cohort); the model is
            unchanged and no privacy was spent.
        epsilon: privacy spent so far (the worst client at sample level), if DP is on.
        non_finite: the clients whose update held NaN or infinite values and was left out.
        stragglers: the round's stragglers (dropped under FedAvg, partial work under FedProx;
            the dropped ones are counted in ``dropped`` as well).
        simulated_time: the simulated clock at the end of the round, in seconds
            (:mod:`fl.core.speeds`); None in runs recorded before it existed.
        staleness: asynchronous mode: the mean staleness (versions behind) of the buffer's
            updates.
    """

    round: int
    accuracy: float
    loss: float
    sampled: int
    dropped: int
    bytes_up: int | None
    bytes_down: int | None
    secagg_seconds: float
    train_seconds: float
    failed: bool = False
    epsilon: float | None = None
    non_finite: tuple[int, ...] = ()
    stragglers: int = 0
    simulated_time: float | None = None
    staleness: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-safe values (non-finite numbers as None)."""
        values = asdict(self)
        values["non_finite"] = list(self.non_finite)
        return json_safe(values)

    def to_json(self) -> str:
        """One line of ``metrics.jsonl``."""
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, values: object) -> RoundMetrics:
        """The inverse of :meth:`to_dict`.

        Raises:
            ValueError: not the fields of a round's metrics, or values of the wrong type.
        """
        if not isinstance(values, dict):
            raise ValueError(f"expected a JSON object, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        try:
            metrics = cls(
                **{
                    **values,
                    "accuracy": _float(values.get("accuracy")),
                    "loss": _float(values.get("loss")),
                    "non_finite": tuple(int(u) for u in values.get("non_finite", ())),
                }
            )
        except TypeError as error:
            raise ValueError(str(error)) from None
        if not isinstance(metrics.round, int) or isinstance(metrics.round, bool):
            raise ValueError(f"round must be an integer, got {metrics.round!r}")
        return metrics


def _float(value: object) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number or null, got {value!r}")
    return float(value)


def append_metrics(folder: Path, metrics: RoundMetrics) -> None:
    """Append one JSON line to ``metrics.jsonl``."""
    with open(folder / METRICS_FILE, "a") as handle:
        handle.write(metrics.to_json() + "\n")


def write_metrics(folder: Path, history: list[RoundMetrics]) -> None:
    """Replace ``metrics.jsonl`` with one line per round of ``history``."""
    atomic_write(folder / METRICS_FILE, "".join(m.to_json() + "\n" for m in history).encode())


def reconcile_metrics(folder: Path, history: list[RoundMetrics]) -> str | None:
    """Make ``metrics.jsonl`` hold exactly ``history`` (the rounds a checkpoint vouches for).

    Lines of rounds after the checkpoint (a round interrupted between its metrics and its
    checkpoint) are dropped: that round runs again. Anything else that differs - a truncated or
    edited line, a missing file - is rewritten from ``history``.

    Returns:
        What was repaired, in one sentence, or None if the file already matched.
    """
    path = folder / METRICS_FILE
    expected = [m.to_json() for m in history]
    lines: list[str] | None = None
    unreadable = None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as error:
        unreadable = str(error)
    if lines == expected:
        return None
    write_metrics(folder, history)
    if lines is None:
        reason = f"could not be read ({unreadable})" if unreadable else "was missing"
        return f"{path} {reason}: rewritten from the checkpoint ({len(history)} rounds)"
    if lines[: len(expected)] == expected:
        later = len(lines) - len(expected)
        return (
            f"{path}: dropped {later} line(s) of round(s) after round {len(history)}, which "
            "stopped before its checkpoint and runs again"
        )
    line = next(
        (i + 1 for i, (a, b) in enumerate(zip(lines, expected, strict=False)) if a != b),
        min(len(lines), len(expected)) + 1,
    )
    return (
        f"{path} did not match the checkpoint (from line {line}: damaged, truncated or "
        f"edited): rewritten from the checkpoint ({len(history)} rounds)"
    )


def write_summary(folder: Path, summary: dict) -> None:
    """Write ``summary.json`` (strict JSON, replaced atomically)."""
    text = json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n"
    atomic_write(folder / SUMMARY_FILE, text.encode())


def read_summary(folder: Path) -> dict | None:
    """``summary.json`` as written by :func:`write_summary`, or None if absent or unreadable."""
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def plot_training(folder: Path, history: list[RoundMetrics], *, title: str) -> Path | None:
    """Write ``training.png``: test accuracy and loss per round (None: no round to plot, no
    file written)."""
    if not history:
        return None
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
