"""What the CLI shows, in one of three output modes.

* ``text`` (default): tables and progress bars (rich). Colours and live bars only on a
  terminal: piped or redirected output is plain text, with no escape codes.
* ``quiet``: nothing on stdout; warnings and errors on stderr. The exit status and the files
  written carry the result.
* ``json``: one JSON object per line on stdout, each with an ``event`` field (``start``,
  ``round``, ``point``, ``warning``, ``notice``, ``error``, ``summary``, ...); strict JSON (a
  number that is not finite is ``null``), no colour codes, no progress bars.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import secagg
from fl.cli.demo import DemoOutcome
from fl.core.report import RoundMetrics, json_safe

__all__ = [
    "Output",
    "OutputMode",
    "phase_progress",
    "render_aggregation",
    "render_run",
    "render_run_start",
    "render_sweep",
    "round_header",
    "round_progress",
    "round_row",
]


class OutputMode(str, Enum):
    """How the CLI reports (``--quiet``, ``--json``, or neither)."""

    TEXT = "text"
    QUIET = "quiet"
    JSON = "json"


class Output:
    """The one way CLI code writes anything: text for people, JSON lines for programs.

    Args:
        mode: the output mode.
    """

    def __init__(self, mode: OutputMode = OutputMode.TEXT) -> None:
        self.mode = mode
        # rich detects a terminal: without one it writes plain text with no escape codes
        self.console = Console(soft_wrap=True, highlight=False)
        self.errors = Console(soft_wrap=True, highlight=False, stderr=True)

    @property
    def text(self) -> bool:
        """Whether people-facing text is shown."""
        return self.mode is OutputMode.TEXT

    def print(self, markup: str = "") -> None:
        """A line of rich markup, in text mode only."""
        if self.text:
            self.console.print(markup)

    def plain(self, line: str) -> None:
        """A line printed exactly as given (no markup), in text mode only."""
        if self.text:
            self.console.print(line, markup=False)

    def table(self, table: Table) -> None:
        """A rich table, in text mode only."""
        if self.text:
            self.console.print(table)

    def event(self, name: str, **fields: Any) -> None:
        """A JSON line ``{"event": name, ...}``, in JSON mode only."""
        if self.mode is OutputMode.JSON:
            line = json.dumps({"event": name, **json_safe(fields)}, allow_nan=False, default=str)
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def warning(self, message: str) -> None:
        """A warning: stderr in text and quiet modes, an event in JSON mode."""
        if self.mode is OutputMode.JSON:
            self.event("warning", message=message)
        else:
            self.errors.print(f"[yellow]warning:[/] {escape(message)}")

    def notice(self, message: str) -> None:
        """Information that needs no action (e.g. nothing to do); not shown in quiet mode."""
        if self.mode is OutputMode.JSON:
            self.event("notice", message=message)
        elif self.text:
            self.console.print(f"[cyan]note:[/] {escape(message)}")

    def error(self, message: str, *, exit_code: int, label: str = "error") -> int:
        """Report a failure in one line; returns ``exit_code`` for the caller to exit with."""
        if self.mode is OutputMode.JSON:
            self.event("error", message=message, exit_code=exit_code)
        else:
            self.errors.print(f"[red]{label}:[/] {escape(message)}")
        return exit_code


@contextmanager
def phase_progress(output: Output) -> Iterator[secagg.ProgressCallback | None]:
    """A progress bar per protocol phase (text mode); yields the callback to pass to the round."""
    if not output.text:
        yield None
        return
    columns = (
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    tasks: dict[secagg.Phase, int] = {}
    with Progress(*columns, console=output.console, transient=False) as progress:

        def update(phase: secagg.Phase, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase.value, total=total)
            progress.update(tasks[phase], completed=done)

        yield update


def _size(count: float | None) -> str:
    if count is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def render_aggregation(output: Output, outcome: DemoOutcome) -> None:
    """The per-phase table and the verdict of a demo round."""
    result = outcome.result
    config = result.config
    contributors = sorted(result.contributors)
    up = [result.bytes_sent[u] for u in contributors]
    plain = config.vector_length * config.word_dtype.itemsize
    client_seconds = statistics.median(result.client_seconds[u] for u in contributors)
    output.event(
        "summary",
        clients=config.num_clients,
        threshold=config.threshold,
        neighbours=config.neighbours,
        contributors=len(contributors),
        dropped=sorted(result.dropped),
        phases={
            phase.value: {
                "seconds": seconds,
                "bytes_up": result.phase_bytes_up[phase],
                "bytes_down": result.phase_bytes_down[phase],
            }
            for phase, seconds in result.phase_seconds.items()
        },
        client_seconds_median=client_seconds,
        server_seconds=result.server_seconds,
        bytes_up_per_client_median=statistics.median(up),
        correct=outcome.correct,
    )
    if not output.text:
        return
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
    output.table(table)
    dropped = sorted(result.dropped)
    output.plain(
        f"contributors: {len(contributors)} of {config.num_clients}, dropped: "
        f"{len(dropped)} {dropped[:12]}{' ...' if len(dropped) > 12 else ''}"
    )
    output.plain(
        f"client compute: median {client_seconds:.3f} s, server compute: "
        f"{result.server_seconds:.3f} s, round: {sum(result.phase_seconds.values()):.2f} s"
    )
    output.plain(
        f"bytes up per client: {_size(statistics.median(up))} "
        f"(plaintext vector {_size(plain)}, x{statistics.median(up) / plain:.3f})"
    )
    verdict = "[bold green]yes[/]" if outcome.correct else "[bold red]NO[/]"
    output.print(f"unmasked sum equals the plaintext sum of the contributors' inputs: {verdict}")


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


def _number(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else "nan"


def round_row(metrics: RoundMetrics) -> str:
    """One line of the per-round table (plain text)."""
    row = _ROUND_FORMAT.format(
        metrics.round,
        _number(100 * metrics.accuracy, ".1f") + "%",
        _number(metrics.loss, ".3f"),
        metrics.sampled,
        metrics.dropped,
        _size(metrics.bytes_up),
        f"{metrics.secagg_seconds:.3f}",
        f"{metrics.train_seconds:.2f}",
    )
    if metrics.epsilon is not None:
        row += _EPSILON_FORMAT.format(f"{metrics.epsilon:.3f}")
    if metrics.failed:
        row += "  nothing aggregated: too few clients left; model unchanged"
    return row


@contextmanager
def round_progress(
    output: Output, *, total: int
) -> Iterator[
    tuple[Callable[[int], None], Callable[[RoundMetrics], None], Callable[[Any], None] | None]
]:
    """A progress bar over rounds that prints each round's row above it, and a bar within the
    round (clients trained, then each protocol phase) (text mode on a terminal); rows only off a
    terminal, or one ``round`` event per round (JSON mode).

    Yields:
        ``(started, on_round, on_progress)``: call ``started(done)`` once the run starts
        (``done`` rounds already completed), ``on_round(metrics)`` after each round, and pass
        ``on_progress`` (a :class:`fl.engines.federation.RoundProgress` callback, None when
        nothing is shown) to the engine.
    """
    if not output.text or not output.console.is_terminal:
        # no live bar off a terminal: rows (text mode) or events (JSON mode) only

        def report(metrics: RoundMetrics) -> None:
            output.plain(round_row(metrics))
            output.event("round", **metrics.to_dict())

        yield (lambda _done: None), report, None
        return
    columns = (
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=output.console, transient=True) as progress:
        task = progress.add_task("rounds", total=total, completed=0, visible=False)
        within = progress.add_task("", total=1, completed=0, visible=False)
        shown: list[tuple[int, Any]] = []  # the (round, phase) the inner bar shows

        def started(done: int) -> None:
            progress.update(task, completed=done, visible=True)

        def update(metrics: RoundMetrics) -> None:
            progress.console.print(round_row(metrics), markup=False, highlight=False)
            progress.update(task, completed=metrics.round)
            progress.update(within, visible=False)

        def step(where: Any) -> None:
            key = (where.round, where.phase)
            if not shown or shown[-1] != key:
                shown[:] = [key]
                what = "training" if where.phase is None else where.phase.value
                progress.reset(within, total=max(1, where.total), visible=True)
                progress.update(within, description=f"round {where.round}: {what}")
            progress.update(within, completed=where.done)

        yield started, update, step


def _data_label(data: Any) -> str:
    """The data set and how it is split: Synthetic(alpha, beta) generates each client's data for
    it, so no partition applies."""
    if data.dataset.value == "fedprox-synthetic":
        return f"Synthetic({data.synthetic_alpha:g},{data.synthetic_beta:g}) per client"
    split = f"({data.alpha})" if data.partition.value == "dirichlet" else ""
    return f"{data.dataset.value} {data.partition.value}{split}"


def render_run_start(output: Output, start: Any) -> None:
    """The header of ``privagg run`` (a :class:`fl.engines.inprocess.RunStart`): what will run, and the
    privacy budget: target, spent so far, and what an extension past the calibration spends."""
    config, training, privacy = start.config, start.config.training, start.config.privacy
    mode = "plaintext FedAvg"
    if config.secure.enabled:  # the threat model the run has (SECURITY.md, per engine)
        model = "active server, identities on" if config.secure.identities else "semi-honest server"
        mode = f"secure aggregation (protects against a {model})"
    text = (
        f"[bold]privagg run[/]: {training.clients} clients ({training.cohort_size} per round), "
        f"{_data_label(config.data)}, {config.model.name.value}, {training.rounds} rounds, {mode}, "
        f"dropout {config.secure.dropout:.0%}, seed {config.seed}"
    )
    dp = privacy.level.value != "none"
    if dp:
        if start.epsilon_target is not None:
            budget = (
                f"target epsilon {start.epsilon_target:g} over {start.calibrated_rounds} rounds"
            )
        else:
            budget = f"noise multiplier {privacy.noise_multiplier:g}, no target"
        if privacy.max_epsilon is not None:
            budget += f", stops before epsilon {privacy.max_epsilon:g}"
        text += (
            f", {privacy.level.value}-level DP ({budget}, delta {privacy.delta:g}, "
            f"{privacy.accountant.value})"
        )
    output.print(text)
    used = getattr(start, "workers", 1)
    if used > 1:
        output.print(f"clients' work in {used} worker processes")
    if start.completed_rounds:
        resumed = f"resuming {start.out} after round {start.completed_rounds}"
        if start.epsilon_spent is not None:
            resumed += f": epsilon spent so far {start.epsilon_spent:.3f}"
        output.print(resumed)
    if start.epsilon_projected is not None and start.epsilon_target is not None:
        past = (
            f"--rounds {training.rounds} goes past the {start.calibrated_rounds} rounds the noise "
            f"was calibrated for: epsilon up to {start.epsilon_projected:.3f}"
        )
        if start.epsilon_projected > start.epsilon_target * (1 + 1e-9):
            output.warning(f"{past}, above the target {start.epsilon_target:g}")
        else:
            output.print(
                f"{past}, within the target {start.epsilon_target:g} (a client takes part in at "
                "most the rounds its budget allows: later rounds may find too few clients to run)"
            )
    output.event(
        "start",
        out=str(start.out),
        config=config.to_dict(),
        completed_rounds=start.completed_rounds,
        epsilon_spent=start.epsilon_spent,
        epsilon_target=start.epsilon_target,
        calibrated_rounds=start.calibrated_rounds,
        epsilon_projected=start.epsilon_projected,
        workers=used,
    )
    output.plain(round_header(with_epsilon=dp))


def render_run(output: Output, result: Any) -> None:
    """The closing lines of ``privagg run`` (a :class:`fl.engines.inprocess.RunResult`): accuracy,
    time, privacy spent, and the files written."""
    summary = result.summary
    output.event("summary", out=str(result.out), files=list(result.files), **summary)
    if not result.history:
        output.print("no round ran")
    else:
        accuracy = summary["final_accuracy"]
        shown = f"{100 * accuracy:.1f}%" if accuracy is not None else "nan"
        output.print(
            f"final test accuracy: [bold]{shown}[/] after {summary['rounds']} rounds "
            f"({summary['failed_rounds']} failed), wall time {summary['wall_seconds']:.1f} s "
            f"(training {summary['train_seconds']:.1f} s, secure aggregation "
            f"{summary['secagg_seconds']:.1f} s)"
        )
    if summary.get("epsilon") is not None:
        line = (
            f"privacy: {summary['privacy_level']}-level ({summary['epsilon']:.3f}, "
            f"{summary['delta']:g})-DP spent, by the {summary['accountant']} accountant"
        )
        target = summary.get("epsilon_target")
        if target is not None:
            line += f" (target {target:g})"
        if summary["privacy_level"] == "central":
            line += (
                " against everyone but the server, which is trusted with the noise-free sum "
                "(no guarantee against it)"
            )
        output.print(line + "; ledger in privacy.json")
        if target is not None and summary["epsilon"] > target * (1 + 1e-9):
            output.warning(
                f"epsilon spent {summary['epsilon']:.3f} is above the target {target:g} "
                "(--allow-overspend)"
            )
    if summary.get("stopped_early"):
        output.print(f"[yellow]stopped early:[/] {escape(summary['stopped_early'])} (checkpointed)")
    if summary.get("non_finite_updates"):
        output.warning(
            f"{summary['non_finite_updates']} client update(s) held NaN or infinite values and "
            "were left out of their rounds (metrics.jsonl names them)"
        )
    output.print(f"written to {escape(str(result.out))}/: {', '.join(result.files)}")


def render_sweep(output: Output, summary: list[dict], *, level: str, delta: float) -> None:
    """The accuracy-against-epsilon table of ``privagg sweep``."""
    output.event("summary", level=level, delta=delta, table=summary)
    table = Table(
        title=f"Accuracy against epsilon ({level}-level, delta {delta:g})", title_justify="left"
    )
    for heading in (
        "level",
        "epsilon",
        "runs",
        "accuracy mean",
        "std",
        "min",
        "max",
        "epsilon spent",
    ):
        table.add_column(heading, justify="right")
    for entry in summary:
        spent = entry["epsilon_spent"]
        table.add_row(
            entry.get("level", level),
            "inf (no DP)" if math.isinf(entry["epsilon"]) else f"{entry['epsilon']:g}",
            str(entry["runs"]),
            f"{100 * entry['accuracy_mean']:.1f}%",
            f"{100 * entry['accuracy_std']:.1f}",
            f"{100 * entry['accuracy_min']:.1f}%",
            f"{100 * entry['accuracy_max']:.1f}%",
            "-" if spent is None else f"{spent:.3f}",
        )
    output.table(table)
