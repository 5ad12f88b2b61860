"""Terminal rendering for the CLI: progress bars and tables (rich)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import secagg
from fl.demo import DemoOutcome
from fl.report import RoundMetrics
from fl.simulation import RunResult

__all__ = [
    "phase_progress",
    "render_aggregation",
    "render_run",
    "render_sweep",
    "round_header",
    "round_progress",
    "round_row",
]


@contextmanager
def phase_progress(console: Console) -> Iterator[secagg.ProgressCallback]:
    """A progress bar per protocol phase; yields the callback to pass to the round."""
    columns = (
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    tasks: dict[secagg.Phase, int] = {}
    with Progress(*columns, console=console, transient=False) as progress:

        def update(phase: secagg.Phase, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase.value, total=total)
            progress.update(tasks[phase], completed=done)

        yield update


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def render_aggregation(console: Console, outcome: DemoOutcome) -> None:
    """Print the per-phase table and the verdict of a demo round."""
    result = outcome.result
    table = Table(title="Secure aggregation, phase by phase", title_justify="left")
    for heading in ("phase", "wall s", "clients -> server", "server -> clients"):
        table.add_column(heading, justify="left" if heading == "phase" else "right")
    for phase, seconds in result.phase_seconds.items():
        table.add_row(
            phase.value,
            f"{seconds:.3f}",
            _size(result.phase_bytes_up[phase]),
            _size(result.phase_bytes_down[phase]),
        )
    console.print(table)
    contributors = sorted(result.contributors)
    config = result.config
    up = [result.bytes_sent[u] for u in contributors]
    plain = config.vector_length * config.word_dtype.itemsize
    console.print(
        f"contributors: {len(contributors)} of {config.num_clients}, dropped: "
        f"{len(result.dropped)} {sorted(result.dropped)[:12]}{' ...' if len(result.dropped) > 12 else ''}"
    )
    console.print(
        f"client compute: median {statistics.median(result.client_seconds[u] for u in contributors):.3f} s"
        f", server compute: {result.server_seconds:.3f} s, "
        f"round: {sum(result.phase_seconds.values()):.2f} s"
    )
    console.print(
        f"bytes up per client: {_size(statistics.median(up))} "
        f"(plaintext vector {_size(plain)}, x{statistics.median(up) / plain:.3f})"
    )
    verdict = "[bold green]yes[/]" if outcome.correct else "[bold red]NO[/]"
    console.print(f"unmasked sum equals the plaintext sum of the contributors' inputs: {verdict}")


_ROUND_COLUMNS = (
    "round",
    "accuracy",
    "loss",
    "sampled",
    "dropped",
    "bytes up",
    "secagg s",
    "train s",
)
_ROUND_FORMAT = "{:>5}  {:>8}  {:>6}  {:>7}  {:>7}  {:>10}  {:>8}  {:>7}"
_EPSILON_FORMAT = "  {:>8}"


def round_header(*, with_epsilon: bool = False) -> str:
    """The header line of the per-round table."""
    epsilon = _EPSILON_FORMAT.format("epsilon") if with_epsilon else ""
    return _ROUND_FORMAT.format(*_ROUND_COLUMNS) + epsilon


def round_row(metrics: RoundMetrics) -> str:
    """One line of the per-round table."""
    row = _ROUND_FORMAT.format(
        metrics.round,
        f"{100 * metrics.accuracy:.1f}%",
        f"{metrics.loss:.3f}",
        metrics.sampled,
        metrics.dropped,
        _size(metrics.bytes_up),
        f"{metrics.secagg_seconds:.3f}",
        f"{metrics.train_seconds:.2f}",
    )
    if metrics.epsilon is not None:
        row += _EPSILON_FORMAT.format(f"{metrics.epsilon:.3f}")
    failed = "  [red]nothing aggregated: too many dropouts or too few clients[/]"
    return row + (failed if metrics.failed else "")


@contextmanager
def round_progress(
    console: Console, *, total: int, done: int
) -> Iterator[Callable[[RoundMetrics], None]]:
    """A progress bar over rounds that prints each round's row above it; yields the callback."""
    columns = (TextColumn("rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("rounds", total=total, completed=done)

        def update(metrics: RoundMetrics) -> None:
            progress.console.print(round_row(metrics), highlight=False)
            progress.update(task, completed=metrics.round)

        yield update


def render_run(console: Console, result: RunResult) -> None:
    """The closing lines of ``privagg run``: final accuracy, time, and the files written."""
    summary = result.summary
    accuracy = summary["final_accuracy"]
    console.print(
        f"final test accuracy: [bold]{100 * accuracy:.1f}%[/] after {summary['rounds']} rounds "
        f"({summary['failed_rounds']} failed), wall time {summary['wall_seconds']:.1f} s "
        f"(training {summary['train_seconds']:.1f} s, secure aggregation {summary['secagg_seconds']:.1f} s)"
    )
    if summary.get("epsilon") is not None:
        console.print(
            f"privacy: {summary['privacy_level']}-level ({summary['epsilon']:.3f}, {summary['delta']:g})-DP "
            f"by the {summary['accountant']} accountant; ledger in privacy.json"
        )
    if summary.get("stopped_early"):
        console.print(f"[yellow]stopped early:[/] {summary['stopped_early']} (checkpointed)")
    names = ["config.toml", "metrics.jsonl", "summary.json", "training.png"]
    if summary.get("epsilon") is not None:
        names.append("privacy.json")
    files = ", ".join(names)
    console.print(f"written to {result.out}/: {files}")


def render_sweep(console: Console, summary: list[dict], *, level: str, delta: float) -> None:
    """The accuracy-against-epsilon table of ``privagg sweep``."""
    table = Table(
        title=f"Accuracy against epsilon ({level}-level, delta {delta:g})", title_justify="left"
    )
    for heading in ("epsilon", "runs", "accuracy mean", "std", "min", "max", "epsilon spent"):
        table.add_column(heading, justify="right")
    for entry in summary:
        spent = entry["epsilon_spent"]
        table.add_row(
            "inf (no DP)" if math.isinf(entry["epsilon"]) else f"{entry['epsilon']:g}",
            str(entry["runs"]),
            f"{100 * entry['accuracy_mean']:.1f}%",
            f"{100 * entry['accuracy_std']:.1f}",
            f"{100 * entry['accuracy_min']:.1f}%",
            f"{100 * entry['accuracy_max']:.1f}%",
            "-" if spent is None else f"{spent:.3f}",
        )
    console.print(table)
