"""The ``privagg`` command line: argument parsing and rendering; the work lives in library
functions.

One error path: every mistake a user can make (a flag, a TOML file, an output folder, a damaged
checkpoint) ends with one line naming the file, key or value and the fix, and exit status 2; a
round that cannot finish safely exits 1; no traceback.
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import secagg
from dp.accounting import AccountantKind
from dp.distributed import Mechanism
from dp.errors import DPError
from dp.ledger import PrivacyLevel
from fl.cli.console import Output, OutputMode, phase_progress, render_aggregation
from fl.cli.demo import run_aggregation_demo
from fl.core.config import (
    AlgorithmName,
    Dataset,
    Device,
    ModelName,
    Partition,
    RunConfig,
    ScheduleMode,
)
from fl.errors import FLError, OutputError, UsageError

__all__ = ["build_parser", "main"]

_PHASES = [p.value for p in secagg.Phase]
_DEFAULTS = RunConfig()


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions and epilogs as written, and shows every option's default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or action.default in (None, argparse.SUPPRESS)
            or not action.option_strings
            or isinstance(action, argparse._HelpAction | argparse._VersionAction)
        ):
            return text
        return f"{text} (default: %(default)s)"


def _default(dotted: str) -> str:
    """The default of a configuration key, for help texts."""
    value: Any = _DEFAULTS
    for part in dotted.split("."):
        value = getattr(value, part)
    return f"(default: {getattr(value, 'value', value)})"


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _cores() -> int:
    """The cores this process may run on (as :func:`fl.engines.pool.available_cores`, which
    the CLI does not import: it loads torch)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def _data_spec(text: str) -> dict[str, Any]:
    """``--data``: digits | synthetic | synthetic:ALPHA,BETA | npz:PATH, as configuration keys."""
    name, _, argument = text.partition(":")
    if name == Dataset.DIGITS.value and not argument:
        return {"data.dataset": Dataset.DIGITS.value}
    if name == "npz" and argument:
        return {"data.dataset": Dataset.NPZ.value, "data.path": argument}
    if name == "synthetic" and not argument:
        return {"data.dataset": Dataset.SYNTHETIC.value}
    if name == "synthetic":
        try:
            alpha, beta = (float(part) for part in argument.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"synthetic:ALPHA,BETA takes two numbers, e.g. synthetic:1,1; got {text}"
            ) from None
        return {
            "data.dataset": Dataset.FEDPROX_SYNTHETIC.value,
            "data.synthetic_alpha": alpha,
            "data.synthetic_beta": beta,
        }
    raise argparse.ArgumentTypeError(
        f"must be digits, synthetic, synthetic:ALPHA,BETA or npz:PATH; got {text}"
    )


def _levels(text: str) -> list[PrivacyLevel]:
    """``--level``: privacy levels, comma-separated (none is the sweep's reference)."""
    allowed = [v.value for v in PrivacyLevel if v is not PrivacyLevel.NONE]
    levels = []
    for part in text.split(","):
        if part.strip() not in allowed:
            raise argparse.ArgumentTypeError(
                f"must list levels among {', '.join(allowed)} (comma-separated); got {text}"
            )
        levels.append(PrivacyLevel(part.strip()))
    return list(dict.fromkeys(levels))


def _output_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("output").add_mutually_exclusive_group()
    group.add_argument(
        "--quiet",
        action="store_true",
        help="print nothing but warnings and errors (stderr); the exit status and the files "
        "written carry the result",
    )
    group.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per line (an event field in each), for programs",
    )
    return parent


def _add_run_parser(commands: argparse._SubParsersAction, output: argparse.ArgumentParser) -> None:
    run = commands.add_parser(
        "run",
        parents=[output],
        help="federated training with secure weighted averaging (the main job)",
        description=(
            "Train a model over a federation of in-process clients. Each round the server samples "
            "a cohort, each client trains locally from the global model, and the updates are "
            "averaged with weights n_k/n (FedAvg) through secure aggregation: the server only "
            "ever sees the sum. Clients drop out at random protocol phases. With no flags: 10 "
            "clients on non-IID (Dirichlet 0.5) handwritten digits, 20 rounds, 10% dropout. "
            "Settings come from the defaults, then --config FILE, then the flags below. Output: "
            "config.toml, metrics.jsonl, summary.json, training.png and a checkpoint per round."
        ),
        epilog=(
            "examples:\n"
            "  privagg run                                  # the default federation\n"
            "  privagg run --clients 50 --fraction 0.2 --rounds 40 --model cnn\n"
            "  privagg run --no-secure --out runs/plain     # plaintext FedAvg, for comparison\n"
            "  privagg run --resume                         # continue the latest run in runs/\n"
            "  privagg run --data synthetic:1,1 --clients 30 --per-round 10 --model logistic \\\n"
            "      --algorithm fedprox --mu 1 --stragglers 0.5 --local-epochs 20   # FedProx\n"
            "  privagg run --mode async --buffer 5 --concurrency 20 --clients 50   # FedBuff\n"
            "  privagg run --dp central --epsilon 4 --clients 100 --per-round 20   # central DP"
        ),
        formatter_class=_Formatter,
    )
    run.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration (see config.toml of any run) (default: none, built-in settings)",
    )
    run.add_argument(
        "--clients", type=int, help=f"number of clients {_default('training.clients')}"
    )
    run.add_argument("--rounds", type=int, help=f"training rounds {_default('training.rounds')}")
    run.add_argument(
        "--fraction",
        type=float,
        help=f"fraction of clients sampled per round, in (0, 1] {_default('training.fraction')}",
    )
    run.add_argument(
        "--per-round",
        type=int,
        help="clients sampled per round, a count that overrides --fraction (default: unset)",
    )
    run.add_argument(
        "--dropout",
        type=float,
        help=f"probability that a sampled client drops out {_default('secure.dropout')}",
    )
    run.add_argument(
        "--model",
        choices=[m.value for m in ModelName],
        help=f"reference model (logistic: multinomial logistic regression) {_default('model.name')}",
    )
    run.add_argument(
        "--data",
        type=_data_spec,
        metavar="SPEC",
        help="the data set: digits (scikit-learn's 8x8 digits), synthetic (a Gaussian mixture), "
        "synthetic:ALPHA,BETA (Synthetic(alpha, beta) of the FedProx paper: 60 features, 10 "
        "classes, every client's data generated for it, heavy-tailed client sizes), or "
        "npz:PATH (arrays x, y) (default: digits)",
    )
    run.add_argument(
        "--local-epochs",
        type=int,
        help=f"local epochs per round (E) {_default('training.local_epochs')}",
    )
    run.add_argument(
        "--batch-size", type=int, help=f"local minibatch size {_default('training.batch_size')}"
    )
    run.add_argument(
        "--lr", type=float, help=f"local learning rate {_default('training.learning_rate')}"
    )
    run.add_argument(
        "--partition",
        choices=[p.value for p in Partition],
        help=f"data split {_default('data.partition')}",
    )
    run.add_argument(
        "--alpha",
        type=float,
        help=f"Dirichlet concentration: smaller is more skewed {_default('data.alpha')}",
    )
    run.add_argument(
        "--secure",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="secure aggregation on, or plaintext FedAvg (default: on)",
    )
    run.add_argument(
        "--identities",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="signed keys and the consistency check, which protect the clients against an "
        "active server; client-level DP needs them to remove excess noise after dropouts "
        f"exactly {_default('secure.identities')}",
    )
    run.add_argument(
        "--max-weight",
        type=int,
        metavar="N",
        help="public bound on a client's FedAvg weight (its example count), which sizes the "
        "secure sum's encoding; a client holding more examples is refused before round 1 "
        f"{_default('secure.max_weight')}",
    )
    run.add_argument(
        "--device",
        choices=[d.value for d in Device],
        help=f"where clients train {_default('device')}",
    )
    run.add_argument(
        "--seed",
        type=int,
        help=f"seed of data split, sampling, dropouts, training {_default('seed')}",
    )
    run.add_argument("--out", metavar="DIR", help="output folder (default: a new runs/run-<time>)")
    run.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="processes for the clients' work: local training, encoding and noise, and the "
        "clients' side of secure aggregation; 1 runs it all in this process, the model is the "
        "same bit for bit either way; a cohort too small to share (under 32 clients per "
        f"worker) uses fewer (default: the cores this process may use, {_cores()})",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (default: off; without --out, the latest in runs/)",
    )
    algorithm = run.add_argument_group(
        "algorithm",
        "FedAvg (McMahan et al. 2017) or FedProx (Li et al. 2020). Stragglers are a fraction of "
        "every round's cohort, drawn from the seed, that cannot finish their local epochs: "
        "FedAvg drops them, FedProx averages their partial work (1 to E-1 epochs).",
    )
    algorithm.add_argument(
        "--algorithm",
        choices=[a.value for a in AlgorithmName],
        help=f"federated algorithm {_default('algorithm.name')}",
    )
    algorithm.add_argument(
        "--mu",
        type=float,
        help="FedProx's proximal weight: (mu/2)||w - w_global||^2 joins each local objective "
        f"{_default('algorithm.mu')}",
    )
    algorithm.add_argument(
        "--stragglers",
        type=float,
        help=f"fraction of each cohort that straggles, in [0, 1] {_default('algorithm.stragglers')}",
    )
    schedule = run.add_argument_group(
        "asynchronous mode",
        "Buffered asynchronous secure aggregation (FedBuff, Nguyen et al. 2022): C clients train "
        "at once on the model they pulled, every K arrivals form one secure-aggregation session "
        "(one server update), and each client weighs its update by 1/sqrt(1 + staleness) before "
        "masking it. K must be at least the clients' policy floor (policy.min_clients, 5). "
        "Client speeds are simulated (a seeded lognormal spread); metrics carry the simulated "
        "time, in both modes.",
    )
    schedule.add_argument(
        "--mode",
        choices=[m.value for m in ScheduleMode],
        help=f"synchronous rounds or buffered asynchronous updates {_default('schedule.mode')}",
    )
    schedule.add_argument(
        "--buffer",
        type=int,
        metavar="K",
        help="async: arrivals per secure-aggregation session (default: the cohort size)",
    )
    schedule.add_argument(
        "--concurrency",
        type=int,
        metavar="C",
        help="async: clients training at once (default: twice the buffer)",
    )
    schedule.add_argument(
        "--speed-sigma",
        type=float,
        help="spread of simulated client speeds, the sigma of a lognormal "
        f"{_default('schedule.speed_sigma')}",
    )
    privacy = run.add_argument_group(
        "differential privacy",
        "sample level: DP-SGD (Opacus) on every client, epsilon per record; client level: each "
        "client clips its update and adds integer noise before masking, epsilon per client; "
        "central level: each client clips its update and the server, trusted with the "
        "noise-free sum, adds Gaussian noise to it, epsilon per client against everyone else. "
        "The noise is calibrated once, for the rounds the run starts with: the target epsilon "
        "is a contract for the run's life. The flags after --dp need it.",
    )
    privacy.add_argument(
        "--dp",
        choices=[v.value for v in PrivacyLevel],
        help=f"privacy level {_default('privacy.level')}",
    )
    privacy.add_argument(
        "--epsilon", type=float, help="target epsilon over the whole run (default: unset)"
    )
    privacy.add_argument(
        "--delta", type=float, help=f"delta, below 1/n {_default('privacy.delta')}"
    )
    privacy.add_argument(
        "--noise-multiplier",
        type=float,
        help="fixed noise instead of a target epsilon (default: unset)",
    )
    privacy.add_argument(
        "--clip",
        type=float,
        help=f"per-sample gradient bound, or update L2 bound {_default('privacy.clip')}",
    )
    privacy.add_argument(
        "--max-epsilon",
        type=float,
        help="stop, checkpointed, before a round could pass it (default: unset)",
    )
    privacy.add_argument(
        "--allow-overspend",
        action="store_true",
        help="with --resume: let --rounds go past the rounds the noise was calibrated for, "
        "spending more than the target epsilon (recorded in config.toml and summary.json) "
        "(default: off, such a resume is refused with the epsilon it would reach)",
    )
    privacy.add_argument(
        "--accountant",
        choices=[v.value for v in AccountantKind],
        help=f"privacy accountant {_default('privacy.accountant')}",
    )
    privacy.add_argument(
        "--mechanism",
        choices=[v.value for v in Mechanism],
        help=f"client-level noise {_default('privacy.mechanism')}",
    )


_RUN_FLAGS = {
    "clients": "training.clients",
    "rounds": "training.rounds",
    "fraction": "training.fraction",
    "per_round": "training.per_round",
    "dropout": "secure.dropout",
    "model": "model.name",
    "local_epochs": "training.local_epochs",
    "batch_size": "training.batch_size",
    "lr": "training.learning_rate",
    "algorithm": "algorithm.name",
    "mu": "algorithm.mu",
    "stragglers": "algorithm.stragglers",
    "mode": "schedule.mode",
    "buffer": "schedule.buffer",
    "concurrency": "schedule.concurrency",
    "speed_sigma": "schedule.speed_sigma",
    "partition": "data.partition",
    "alpha": "data.alpha",
    "secure": "secure.enabled",
    "identities": "secure.identities",
    "max_weight": "secure.max_weight",
    "device": "device",
    "seed": "seed",
    "out": "out",
    "dp": "privacy.level",
    "epsilon": "privacy.epsilon",
    "delta": "privacy.delta",
    "noise_multiplier": "privacy.noise_multiplier",
    "clip": "privacy.clip",
    "max_epsilon": "privacy.max_epsilon",
    "accountant": "privacy.accountant",
    "mechanism": "privacy.mechanism",
}
_PRIVACY_FLAGS = (
    "epsilon",
    "delta",
    "noise_multiplier",
    "clip",
    "max_epsilon",
    "accountant",
    "mechanism",
    "allow_overspend",
)


def _check_privacy_flags(args: argparse.Namespace, level: PrivacyLevel) -> None:
    given = [flag for flag in _PRIVACY_FLAGS if getattr(args, flag) not in (None, False)]
    if given and level is PrivacyLevel.NONE:
        flags = ", ".join("--" + flag.replace("_", "-") for flag in given)
        raise UsageError(
            f"{flags} without --dp: add --dp sample, client or central (or privacy.level in the "
            "--config file), or drop the flag; without a privacy level the run has no "
            "differential privacy"
        )


def _run_config(args: argparse.Namespace) -> RunConfig:
    """The run's configuration: defaults, then --config, then flags; or, resuming, the run's
    own settings with the flags that may change."""
    from fl.core.run_folder import latest_run_folder, new_run_folder, resume_config

    overrides = {
        key: getattr(args, flag)
        for flag, key in _RUN_FLAGS.items()
        if getattr(args, flag) is not None and flag != "out"
    }
    overrides.update(args.data or {})
    if args.resume:
        if args.config:
            raise UsageError(
                f"--config {args.config} cannot change a run being resumed: it keeps the "
                "settings it started with (only --rounds and --max-epsilon may change); drop "
                "--config, or start a new run with it and another --out"
            )
        folder = Path(args.out) if args.out else latest_run_folder()
        if folder is None:
            raise OutputError("no run to resume under runs/; pass --out DIR")
        config = resume_config(folder, {})
        _check_privacy_flags(args, PrivacyLevel(args.dp or config.privacy.level))
        return config.with_overrides(overrides)
    if args.allow_overspend:
        raise UsageError(
            "--allow-overspend applies to --resume only: a new run calibrates its noise for "
            "all its rounds"
        )
    from fl.core.config import load_config

    config = load_config(args.config, overrides) if args.config else RunConfig()
    _check_privacy_flags(args, PrivacyLevel(args.dp or config.privacy.level))
    config = config.with_overrides({**overrides, "out": args.out or config.out})
    if config.out is None:
        config = config.with_overrides({"out": str(new_run_folder())})
    return config


def _run(args: argparse.Namespace, output: Output) -> int:
    from fl.cli.console import render_run, render_run_start, round_progress
    from fl.engines.inprocess import check_output, run_federation

    config = _run_config(args)
    check_output(config, resume=args.resume)  # refuse a clash before any slow setup
    progress = round_progress(output, total=config.training.rounds)
    with progress as (started, on_round, on_progress):

        def on_start(start: Any) -> None:
            if args.workers is not None and start.workers < args.workers:
                output.notice(
                    f"--workers {args.workers}: using {start.workers} ({start.workers_reason})"
                )
            render_run_start(output, start)
            started(start.completed_rounds)

        result = run_federation(
            config,
            resume=args.resume,
            allow_overspend=args.allow_overspend,
            on_start=on_start,
            on_round=on_round,
            on_progress=on_progress,
            workers=args.workers or _cores(),
        )
    if result.nothing_to_do is not None:
        output.notice(f"nothing to do in {result.out}: {result.nothing_to_do}")
        return 0
    render_run(output, result)
    return 0


def _add_sweep_parser(
    commands: argparse._SubParsersAction, output: argparse.ArgumentParser
) -> None:
    sweep = commands.add_parser(
        "sweep",
        parents=[output],
        help="privacy-budget experiment: accuracy against epsilon",
        description=(
            "Train the federation once per (epsilon, seed), in parallel processes, each in its own "
            "folder under --out, plus a non-private reference (epsilon inf); then write sweep.csv, "
            "sweep.json and accuracy_vs_epsilon.png and print the table. Run it again with the "
            "same --out and the same settings to resume: finished runs are skipped, interrupted "
            "ones resume. Other settings (e.g. more rounds, whose noise would not match the "
            "points' epsilons) are refused: use another --out. A point whose configuration its "
            "run refuses before round 1 (e.g. an epsilon its level cannot reach with this many "
            "clients) is reported with the reason and skipped; the others run, and the exit "
            "status is then 1."
        ),
        epilog=(
            "examples:\n"
            "  privagg sweep --epsilons 0.5,1,2,4,8,inf --level sample --seeds 3 --jobs 2\n"
            "  privagg sweep --epsilons 1,2,4,8,inf --level client,central --clients 100 \\\n"
            "      --per-round 20 --seeds 2     # client against central level, one plot"
        ),
        formatter_class=_Formatter,
    )
    sweep.add_argument(
        "--epsilons", default="0.5,1,2,4,8,inf", help="comma-separated targets (inf: no DP)"
    )
    sweep.add_argument(
        "--level",
        type=_levels,
        default=[PrivacyLevel.SAMPLE],
        metavar="LEVELS",
        help="privacy level(s), comma-separated: sample, client, central; several levels are "
        "trained on the same settings and drawn on one plot (e.g. client,central) "
        "(default: sample)",
    )
    sweep.add_argument(
        "--seeds", type=_positive, default=3, help="repetitions per epsilon (seeds 0..N-1)"
    )
    sweep.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration of every run (default: none, built-in settings)",
    )
    sweep.add_argument(
        "--rounds", type=int, help=f"training rounds of every run {_default('training.rounds')}"
    )
    sweep.add_argument(
        "--clients", type=int, help=f"clients of every run {_default('training.clients')}"
    )
    sweep.add_argument(
        "--per-round",
        type=int,
        help="clients sampled per round in every run (default: unset, training.fraction)",
    )
    sweep.add_argument(
        "--out", metavar="DIR", help="sweep folder (default: a new runs/sweep-<time>)"
    )
    sweep.add_argument(
        "--jobs", type=_positive, default=os.cpu_count() or 1, help="parallel processes"
    )


def _sweep_config(args: argparse.Namespace) -> RunConfig:
    """The configuration every point of a sweep shares: --config with the size flags."""
    from fl.core.config import load_config

    overrides = {
        key: value
        for key, value in (
            ("training.rounds", args.rounds),
            ("training.clients", args.clients),
            ("training.per_round", args.per_round),
        )
        if value is not None
    }
    if args.config:
        return load_config(args.config, overrides)  # the file and the flags checked as one
    return RunConfig().with_overrides(overrides)


def _sweep(args: argparse.Namespace, output: Output) -> int:
    import math
    import time

    from fl.cli.console import render_sweep
    from fl.cli.sweep import (
        SweepRefusal,
        SweepRow,
        parse_epsilons,
        plan_sweep,
        run_sweep,
        summarise,
        write_outputs,
    )

    base = _sweep_config(args)
    level = args.level
    names = ",".join(v.value for v in level)
    out = Path(args.out or time.strftime("runs/sweep-%Y%m%d-%H%M%S"))
    points = plan_sweep(
        base, epsilons=parse_epsilons(args.epsilons), level=level, seeds=args.seeds, out=out
    )
    output.print(
        f"[bold]privagg sweep[/]: {len(points)} runs ({names}-level DP), {args.jobs} at a "
        f"time, in {out}/"
    )
    output.event("start", out=str(out), runs=len(points), level=names, jobs=args.jobs)

    def report(row: SweepRow, cached: bool) -> None:
        eps = "inf" if math.isinf(row.epsilon) else f"{row.epsilon:g}"
        note = " (already done)" if cached else f" in {row.wall_seconds:.1f} s"
        output.plain(
            f"  {row.level:>7} epsilon {eps:>5} seed {row.seed}: accuracy "
            f"{100 * row.final_accuracy:.1f}%{note}"
        )
        output.event("point", cached=cached, **row.__dict__)

    refused: list[SweepRefusal] = []

    def refuse(refusal: SweepRefusal) -> None:
        refused.append(refusal)
        output.warning(refusal.describe())
        output.event("refused", **refusal.__dict__)

    rows = run_sweep(points, jobs=args.jobs, on_result=report, on_refused=refuse)
    write_outputs(out, rows, level=level, refused=refused)
    render_sweep(output, summarise(rows), level=names, delta=base.privacy.delta)
    files = ["sweep.csv", "sweep.json", "accuracy_vs_epsilon.png"]
    output.plain(f"written to {out}/: {', '.join(files)}")
    output.event("files", out=str(out), files=files)
    if refused:
        output.warning(
            f"{len(refused)} of {len(points)} points were refused before round 1 (listed above "
            "and in sweep.json); the table and the plot hold the others"
        )
        return 1
    return 0


def _audit(args: argparse.Namespace, output: Output) -> int:
    from pathlib import Path

    from fl.cli.audit_report import audit_progress, build_report, render_markdown, write_report
    from fl.core.config import load_config

    config = load_config(args.config) if args.config else RunConfig()
    output.print(
        "[bold]privagg audit[/]: empirical privacy audit"
        + ("" if args.no_tests else " and backing tests")
    )
    with audit_progress(output.console) as progress:
        report = build_report(config, run_tests=not args.no_tests, progress=progress)
    write_report(Path(args.out), report)
    output.plain(render_markdown(report))
    output.plain(f"written to {args.out}/: audit.md, audit.json")
    failed = any(result["failed"] for result in (report["claims"] or {}).values())
    return 1 if failed else 0


def _version() -> str:
    try:
        return metadata.version("privagg")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``privagg`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="privagg",
        description="Privacy-preserving federated learning: secure aggregation and differential privacy.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"privagg {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    output = _output_options()
    _add_run_parser(commands, output)
    _add_sweep_parser(commands, output)
    audit = commands.add_parser(
        "audit",
        help="guarantee report: threat model, parameters, empirical privacy audit, backing tests",
        description=(
            "Write audit.md and audit.json for a configuration: the threat model; n, t, k, ring "
            "and dropout tolerance; identities; the DP level with (epsilon, delta) and accountant; "
            "the one-run empirical audit's epsilon lower bound (Steinke et al. 2023); and, for "
            "each claim, the tests that back it and their result (runs pytest in a checkout)."
        ),
        formatter_class=_Formatter,
    )
    audit.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration (default: none, the default run)",
    )
    audit.add_argument("--out", metavar="DIR", default="runs/audit", help="report folder")
    audit.add_argument("--no-tests", action="store_true", help="skip running the backing tests")
    aggregate = commands.add_parser(
        "aggregate",
        parents=[output],
        help="run one secure-aggregation round over in-process clients and check the sum",
        description=(
            "Run one round of secure aggregation (Bonawitz et al. 2017, SecAgg+ graph of Bell et "
            "al. 2020) with every client in this process, passing real byte messages. Clients "
            "drop out as asked; the server unmasks the sum of the survivors' vectors, which is "
            "checked against the plaintext sum. Threshold and neighbours default to the rules in "
            "SECURITY.md."
        ),
        formatter_class=_Formatter,
    )
    aggregate.add_argument("--clients", type=_positive, default=100, help="number of clients n")
    aggregate.add_argument("--dim", type=_positive, default=100_000, help="vector length d")
    aggregate.add_argument(
        "--dropout", type=_fraction, default=0.1, help="fraction of clients that drop out"
    )
    aggregate.add_argument(
        "--dropout-phase",
        choices=_PHASES,
        default=secagg.Phase.MASKED_INPUT.value,
        help="phase in which they drop out; masked-input (after sharing keys) is the costliest "
        "for the server, which must rebuild their pairwise masks",
    )
    aggregate.add_argument(
        "--threshold",
        type=_positive,
        help="Shamir threshold t (default: recommended for n, see SECURITY.md)",
    )
    aggregate.add_argument(
        "--neighbours",
        type=_positive,
        help="neighbours k; n-1 = complete graph (default: recommended for n)",
    )
    aggregate.add_argument("--ring-bits", type=int, default=32, help="sum modulo 2^b")
    aggregate.add_argument(
        "--identities",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Ed25519 client identities: signed keys and messages plus the consistency check",
    )
    aggregate.add_argument(
        "--seed", type=int, help="replay protocol randomness, demos only (default: os.urandom)"
    )
    return parser


def _aggregate(args: argparse.Namespace, output: Output) -> int:
    phase = secagg.Phase(args.dropout_phase)
    if phase is secagg.Phase.CONSISTENCY_CHECK and not args.identities:
        return output.error(
            "--dropout-phase consistency-check exists only with --identities; drop "
            "--no-identities or pick another phase",
            exit_code=2,
        )
    output.print(
        f"[bold]privagg aggregate[/]: {args.clients} clients, d={args.dim:,}, ring "
        f"Z_2^{args.ring_bits}, {args.dropout:.0%} dropping out in {phase.value}, identities "
        f"{'on' if args.identities else 'off'}"
    )
    output.event(
        "start",
        clients=args.clients,
        dim=args.dim,
        ring_bits=args.ring_bits,
        dropout=args.dropout,
        dropout_phase=phase.value,
        identities=args.identities,
    )
    with phase_progress(output) as progress:
        outcome = run_aggregation_demo(
            clients=args.clients,
            dim=args.dim,
            dropout=args.dropout,
            dropout_phase=phase,
            threshold=args.threshold,
            neighbours=args.neighbours,
            ring_bits=args.ring_bits,
            identities=args.identities,
            seed=args.seed,
            progress=progress,
        )
    config = outcome.result.config
    graph = (
        "complete (SecAgg)" if config.complete_graph else f"{config.neighbours}-regular (SecAgg+)"
    )
    output.plain(f"graph: {graph}, threshold t={config.threshold}")
    render_aggregation(output, outcome)
    return 0 if outcome.correct else 1


def _dispatch(args: argparse.Namespace, output: Output) -> int:
    if args.command == "run":
        return _run(args, output)
    if args.command == "sweep":
        return _sweep(args, output)
    if args.command == "audit":
        return _audit(args, output)
    return _aggregate(args, output)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``privagg`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    mode = OutputMode.TEXT
    if getattr(args, "json", False):
        mode = OutputMode.JSON
    elif getattr(args, "quiet", False):
        mode = OutputMode.QUIET
    output = Output(mode)
    with warnings.catch_warnings():
        # library warnings (a non-finite update, clipped values, a repaired file) go through the
        # output mode: one line on stderr, or a JSON event
        warnings.showwarning = lambda message, *_args, **_kwargs: output.warning(str(message))
        try:
            return _dispatch(args, output)
        except KeyboardInterrupt:
            return output.error(
                "interrupted; the last completed round is checkpointed: resume with --resume",
                exit_code=130,
            )
        except secagg.ThresholdNotMet as error:
            return output.error(
                f"{error}; fix: fewer dropouts, or a lower --threshold",
                exit_code=1,
                label="round failed",
            )
        except (FLError, DPError, secagg.SecAggError, ValueError) as error:
            return output.error(" ".join(str(error).split()), exit_code=2)
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            return output.error(
                f"{where}{error.strerror or error}; check the path and its permissions",
                exit_code=2,
            )
