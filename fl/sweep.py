"""Privacy-budget experiments: one federated training per (epsilon, seed), then the curve.

Each point runs in its own process (``jobs`` at a time) and its own folder
``<out>/eps-<epsilon>/seed-<seed>``; a sweep that stops part-way resumes, skipping finished
points and resuming interrupted ones from their checkpoints. The results land in ``sweep.csv``,
``sweep.json`` and ``accuracy_vs_epsilon.png`` (mean and spread per epsilon, with the
non-private accuracy as a reference line).
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from dp.ledger import PrivacyLevel
from fl.config import RunConfig, parse_toml
from fl.errors import ConfigError

__all__ = ["SweepPoint", "SweepRow", "parse_epsilons", "plan_sweep", "run_sweep", "summarise"]


@dataclass(frozen=True)
class SweepPoint:
    """One training of the sweep."""

    epsilon: float  # math.inf: no differential privacy (the reference)
    seed: int
    config_toml: str
    folder: str


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
    base: RunConfig, *, epsilons: Sequence[float], level: PrivacyLevel, seeds: int, out: Path
) -> list[SweepPoint]:
    """Every (epsilon, seed) point; the non-private reference (inf) is always included."""
    points = []
    for epsilon in sorted({*epsilons, math.inf}):
        for seed in range(base.seed, base.seed + seeds):
            folder = (
                out / ("eps-inf" if math.isinf(epsilon) else f"eps-{epsilon:g}") / f"seed-{seed}"
            )
            privacy = {"privacy.level": PrivacyLevel.NONE.value, "privacy.epsilon": None}
            if not math.isinf(epsilon):
                privacy = {
                    "privacy.level": level.value,
                    "privacy.epsilon": epsilon,
                    "privacy.noise_multiplier": None,
                }
            config = base.with_overrides({**privacy, "seed": seed, "out": str(folder)})
            points.append(SweepPoint(epsilon, seed, config.to_toml(), str(folder)))
    return points


def _finished(point: SweepPoint) -> SweepRow | None:
    summary_path = Path(point.folder) / "summary.json"
    if not summary_path.is_file():
        return None
    summary = json.loads(summary_path.read_text())
    config = parse_toml(point.config_toml)
    if summary.get("rounds") != config.training.rounds and not summary.get("stopped_early"):
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


def _run_point(point: SweepPoint) -> SweepRow:
    """Worker: train one point (resuming it if it was interrupted)."""
    import torch

    from fl.checkpoint import load_checkpoint
    from fl.simulation import run_federation

    torch.set_num_threads(1)
    config = parse_toml(point.config_toml)
    resume = load_checkpoint(Path(point.folder)) is not None
    result = run_federation(config, resume=resume)
    return _row(point, result.summary)


def run_sweep(
    points: Sequence[SweepPoint],
    *,
    jobs: int = 1,
    on_result: Callable[[SweepRow, bool], None] | None = None,
) -> list[SweepRow]:
    """Run the unfinished points in ``jobs`` processes; ``on_result(row, was_cached)`` per point."""
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
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=context) as pool:
            futures = [pool.submit(_run_point, point) for point in pending]
            for future in as_completed(futures):
                row = future.result()
                rows.append(row)
                if on_result:
                    on_result(row, False)
    return sorted(rows, key=lambda r: (r.epsilon, r.seed))


def summarise(rows: Sequence[SweepRow]) -> list[dict]:
    """Per epsilon: mean, standard deviation, min and max accuracy, and mean epsilon spent."""
    table = []
    for epsilon in sorted({r.epsilon for r in rows}):
        group = [r for r in rows if r.epsilon == epsilon]
        accuracies = [r.final_accuracy for r in group]
        spent = [r.epsilon_spent for r in group if r.epsilon_spent is not None]
        table.append(
            {
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


def write_outputs(out: Path, rows: Sequence[SweepRow], *, level: PrivacyLevel) -> None:
    """Write ``sweep.csv``, ``sweep.json`` and ``accuracy_vs_epsilon.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sweep.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(SweepRow.__dataclass_fields__))
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    table = summarise(rows)
    (out / "sweep.json").write_text(
        json.dumps(
            {"level": level.value, "summary": table, "runs": [asdict(r) for r in rows]},
            indent=1,
            default=str,
        )
        + "\n"
    )
    _plot(out, table, level)


def _plot(out: Path, table: list[dict], level: PrivacyLevel) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    private = [t for t in table if not math.isinf(t["epsilon"])]
    reference = next((t for t in table if math.isinf(t["epsilon"])), None)
    figure, axis = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    if private:
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
        axis.set_xscale("log")
        axis.set_xticks(eps, [f"{e:g}" for e in eps])
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
    figure.savefig(out / "accuracy_vs_epsilon.png", dpi=110)
    plt.close(figure)
