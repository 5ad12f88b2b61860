"""Privacy-budget experiments: one federated training per (level, epsilon, seed), then the
curves.

Each point runs in its own process (``jobs`` at a time) and its own folder
``<out>/eps-<epsilon>/seed-<seed>`` (with several privacy levels,
``<out>/<level>/eps-<epsilon>/seed-<seed>``; the non-private reference stays in
``<out>/eps-inf``, shared by the levels); a sweep that stops part-way resumes, skipping finished
points and resuming interrupted ones from their checkpoints. The results land in ``sweep.csv``,
``sweep.json`` and ``accuracy_vs_epsilon.png`` (mean and spread per epsilon, one curve per
level, with the non-private accuracy as a reference line).

A point whose run refuses its configuration before round 1 (typically an epsilon that its privacy
level cannot reach at this federation's size) does not stop the sweep: it becomes a
:class:`SweepRefusal` with the run's reason, is reported as it happens, listed in ``sweep.json``
and named on the plot; the other points run.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import statistics
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from dp.ledger import PrivacyLevel
from fl.core.checkpoint import MANIFEST_FILE, load_checkpoint
from fl.core.config import RunConfig, parse_toml
from fl.core.report import json_safe, read_summary
from fl.errors import ConfigError, FLError, OutputError

__all__ = [
    "SweepPoint",
    "SweepRefusal",
    "SweepRefusedWarning",
    "SweepRow",
    "parse_epsilons",
    "plan_sweep",
    "process_pool",
    "run_sweep",
    "summarise",
]


@dataclass(frozen=True)
class SweepPoint:
    """One training of the sweep."""

    epsilon: float  # math.inf: no differential privacy (the reference)
    seed: int
    config_toml: str
    folder: str
    level: str = PrivacyLevel.NONE.value


@dataclass(frozen=True)
class SweepRow:
    """The outcome of one point (a line of ``sweep.csv``)."""

    epsilon: float
    seed: int
    level: str
    final_accuracy: float
    epsilon_spent: float | None
    delta: float | None
    rounds: int
    wall_seconds: float
    folder: str


@dataclass(frozen=True)
class SweepRefusal:
    """A point whose run refused its configuration before round 1 (nothing was trained or spent)."""

    epsilon: float
    seed: int
    level: str
    reason: str
    folder: str

    def describe(self) -> str:
        """One line: which point, and why."""
        eps = "inf" if math.isinf(self.epsilon) else f"{self.epsilon:g}"
        return f"{self.level}-level epsilon {eps} seed {self.seed} refused: {self.reason}"


class SweepRefusedWarning(UserWarning):
    """A sweep point was refused before round 1; the sweep went on without it."""


def parse_epsilons(text: str) -> list[float]:
    """``"0.5,1,2,inf"`` -> [0.5, 1.0, 2.0, inf]; each must be positive.

    Raises:
        ConfigError: an entry that is not a positive number or ``inf``.
    """
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(
                "--epsilons", text, "comma-separated positive numbers or inf, e.g. 0.5,1,2,inf"
            ) from None
        if not value > 0:
            raise ConfigError("--epsilons", text, f"positive values (got {part.strip()})")
        values.append(value)
    return sorted(set(values))


def plan_sweep(
    base: RunConfig,
    *,
    epsilons: Sequence[float],
    level: PrivacyLevel | Sequence[PrivacyLevel],
    seeds: int,
    out: Path,
) -> list[SweepPoint]:
    """Every (level, epsilon, seed) point; the non-private reference (inf) is always included,
    once for all levels.

    Raises:
        ConfigError: a level of ``none`` (the reference is always there).
    """
    levels = [level] if isinstance(level, PrivacyLevel) else list(dict.fromkeys(level))
    if not levels or PrivacyLevel.NONE in levels:
        raise ConfigError(
            "--level", ",".join(v.value for v in levels), "sample, client and/or central"
        )
    points = []
    for seed in range(base.seed, base.seed + seeds):
        folder = out / "eps-inf" / f"seed-{seed}"
        privacy = {
            "privacy.level": PrivacyLevel.NONE.value,
            "privacy.epsilon": None,
            "privacy.noise_multiplier": None,
            "privacy.max_epsilon": None,
        }
        config = base.with_overrides({**privacy, "seed": seed, "out": str(folder)})
        points.append(SweepPoint(math.inf, seed, config.to_toml(), str(folder)))
    for current in levels:
        root = out if len(levels) == 1 else out / current.value
        for epsilon in sorted({e for e in epsilons if not math.isinf(e)}):
            for seed in range(base.seed, base.seed + seeds):
                folder = root / f"eps-{epsilon:g}" / f"seed-{seed}"
                privacy = {
                    "privacy.level": current.value,
                    "privacy.epsilon": epsilon,
                    "privacy.noise_multiplier": None,
                }
                config = base.with_overrides({**privacy, "seed": seed, "out": str(folder)})
                points.append(
                    SweepPoint(epsilon, seed, config.to_toml(), str(folder), current.value)
                )
    return sorted(points, key=lambda p: (p.epsilon, p.level, p.seed))


def check_points(points: Sequence[SweepPoint]) -> None:
    """Refuse, before anything runs, a sweep whose folders hold runs made with other settings.

    A point's noise was calibrated for its rounds: running it again with more rounds would spend
    more than its epsilon, and a point left half-done by another sweep would be reported next to
    points of this one.

    Raises:
        OutputError: a folder that cannot be resumed as this point (the message says why).
    """
    from fl.core.run_folder import check_output, resume_config

    for point in points:
        config = parse_toml(point.config_toml)
        folder = Path(point.folder)
        resume = (folder / MANIFEST_FILE).exists()
        try:
            saved = resume_config(folder, {}).training.rounds if resume else None
            if saved is not None and saved != config.training.rounds:
                raise FLError(
                    f"it holds a run of {saved} rounds and this sweep asks for "
                    f"{config.training.rounds}; a point's noise is calibrated for its rounds, so "
                    "changing them would spend another epsilon than the point's"
                )
            check_output(config, resume=resume)
        except FLError as error:
            raise OutputError(
                f"this sweep cannot reuse {folder}: {error} (a sweep reruns in the same --out "
                "only with the same settings: use another --out for new ones)"
            ) from None


def _finished(point: SweepPoint) -> SweepRow | None:
    folder = Path(point.folder)
    summary = read_summary(folder)
    if summary is None or not (folder / MANIFEST_FILE).exists():
        return None
    checkpoint = load_checkpoint(folder)
    config = parse_toml(point.config_toml)
    done = checkpoint.completed_rounds if checkpoint is not None else -1
    if summary.get("rounds") != done:
        return None
    if done != config.training.rounds and not summary.get("stopped_early"):
        return None
    return _row(point, summary)


def _row(point: SweepPoint, summary: dict) -> SweepRow:
    return SweepRow(
        epsilon=point.epsilon,
        seed=point.seed,
        level=summary.get("privacy_level", "none"),
        final_accuracy=float(summary["final_accuracy"]),
        epsilon_spent=summary.get("epsilon"),
        delta=summary.get("delta"),
        rounds=int(summary["rounds"]),
        wall_seconds=float(summary["wall_seconds"]),
        folder=point.folder,
    )


def _run_point(point: SweepPoint) -> tuple[SweepRow | SweepRefusal, list[str]]:
    """Worker: train one point (resuming it if it was interrupted); the row, or the refusal of
    its configuration, and the warnings the training raised (shown by the parent process)."""
    import torch

    from fl.engines.inprocess import run_federation

    torch.set_num_threads(1)
    config = parse_toml(point.config_toml)
    resume = (Path(point.folder) / MANIFEST_FILE).exists()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            result = run_federation(config, resume=resume)
        except ConfigError as error:  # raised before round 1: nothing trained, nothing spent
            refusal = SweepRefusal(point.epsilon, point.seed, point.level, str(error), point.folder)
            return refusal, [str(w.message) for w in caught]
    return _row(point, result.summary), [str(w.message) for w in caught]


def process_pool(jobs: int) -> ProcessPoolExecutor:
    """``jobs`` spawned processes that exit when this process dies, even by SIGKILL (a sweep
    stopped with ``kill`` leaves no point training on; rerun the sweep to resume it)."""
    from fl.engines.pool.processes import die_with_parent

    return ProcessPoolExecutor(
        max_workers=max(1, jobs),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    )


def run_sweep(
    points: Sequence[SweepPoint],
    *,
    jobs: int = 1,
    on_result: Callable[[SweepRow, bool], None] | None = None,
    on_refused: Callable[[SweepRefusal], None] | None = None,
) -> list[SweepRow]:
    """Run the unfinished points in ``jobs`` processes; ``on_result(row, was_cached)`` per point.

    Warnings raised while training a point are re-raised here, prefixed with its folder. A point
    whose run refuses its configuration (:class:`~fl.errors.ConfigError`, before round 1) goes
    to ``on_refused``, or, without one, is a :class:`SweepRefusedWarning` naming the point and
    the reason; either way the other points run and the refused one has no row.

    Raises:
        OutputError: a point's folder holds a run made with other settings, or one that cannot
            be resumed (checked for every point before any runs).
    """
    check_points(points)
    rows: list[SweepRow] = []
    pending = []
    for point in points:
        done = _finished(point)
        if done is not None:
            rows.append(done)
            if on_result:
                on_result(done, True)
        else:
            pending.append(point)
    if pending:
        with process_pool(jobs) as pool:
            futures = [pool.submit(_run_point, point) for point in pending]
            for future in as_completed(futures):
                outcome, messages = future.result()
                for message in messages:
                    warnings.warn(f"{outcome.folder}: {message}", stacklevel=2)
                if isinstance(outcome, SweepRefusal):
                    if on_refused:
                        on_refused(outcome)
                    else:
                        warnings.warn(outcome.describe(), SweepRefusedWarning, stacklevel=2)
                    continue
                rows.append(outcome)
                if on_result:
                    on_result(outcome, False)
    return sorted(rows, key=lambda r: (r.epsilon, r.seed))


def summarise(rows: Sequence[SweepRow]) -> list[dict]:
    """Per (level, epsilon): mean, standard deviation, min and max accuracy, and mean epsilon
    spent; ordered by epsilon, the non-private reference (level ``none``) last."""
    table = []
    for epsilon, level in sorted({(r.epsilon, r.level) for r in rows}):
        group = [r for r in rows if r.epsilon == epsilon and r.level == level]
        accuracies = [r.final_accuracy for r in group]
        spent = [r.epsilon_spent for r in group if r.epsilon_spent is not None]
        table.append(
            {
                "level": level,
                "epsilon": epsilon,
                "runs": len(group),
                "accuracy_mean": statistics.fmean(accuracies),
                "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                "accuracy_min": min(accuracies),
                "accuracy_max": max(accuracies),
                "epsilon_spent": statistics.fmean(spent) if spent else None,
            }
        )
    return table


def write_outputs(
    out: Path,
    rows: Sequence[SweepRow],
    *,
    level: PrivacyLevel | Sequence[PrivacyLevel],
    refused: Sequence[SweepRefusal] = (),
) -> None:
    """Write ``sweep.csv``, ``sweep.json`` and ``accuracy_vs_epsilon.png`` into ``out``; refused
    points are listed in ``sweep.json`` (``refused``) and named under the plot."""
    levels = [level] if isinstance(level, PrivacyLevel) else list(level)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sweep.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(SweepRow.__dataclass_fields__))
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    table = summarise(rows)
    document = {
        "level": ",".join(v.value for v in levels),
        "summary": table,
        "runs": [asdict(r) for r in rows],
        "refused": [asdict(r) for r in refused],
    }
    # strict JSON: the non-private reference's epsilon (inf) is written as null
    (out / "sweep.json").write_text(json.dumps(json_safe(document), indent=1) + "\n")
    _plot(out, table, levels, refused)


def _plot(
    out: Path, table: list[dict], levels: Sequence[PrivacyLevel], refused: Sequence[SweepRefusal]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = next((t for t in table if math.isinf(t["epsilon"])), None)
    figure, axis = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    ticks: set[float] = set()
    for level in levels:
        private = [t for t in table if not math.isinf(t["epsilon"]) and t["level"] == level.value]
        if not private:
            continue
        eps = [t["epsilon"] for t in private]
        mean = [100 * t["accuracy_mean"] for t in private]
        low = [100 * (t["accuracy_mean"] - t["accuracy_min"]) for t in private]
        high = [100 * (t["accuracy_max"] - t["accuracy_mean"]) for t in private]
        axis.errorbar(
            eps,
            mean,
            yerr=[low, high],
            marker="o",
            capsize=4,
            label=f"{level.value}-level DP (mean, min-max)",
        )
        ticks.update(eps)
    if ticks:
        axis.set_xscale("log")
        axis.set_xticks(sorted(ticks), [f"{e:g}" for e in sorted(ticks)])
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if reference is not None:
        axis.axhline(
            100 * reference["accuracy_mean"], color="grey", linestyle="--", label="non-private"
        )
    axis.set(
        xlabel="epsilon (log scale)",
        ylabel="final test accuracy (%)",
        title="Accuracy against the privacy budget",
    )
    axis.grid(alpha=0.3)
    axis.legend()
    if refused:
        names = sorted({(r.level, r.epsilon) for r in refused})
        listed = ", ".join(f"{lv} epsilon {eps:g}" for lv, eps in names)
        note = f"refused before round 1 (sweep.json says why): {listed}"
        figure.text(0.01, 0.005, note, fontsize=8, color="dimgrey")
    figure.savefig(out / "accuracy_vs_epsilon.png", dpi=110)
    plt.close(figure)
