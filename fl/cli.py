"""The ``privagg`` command line: argument parsing only; the work lives in library functions."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rich.console import Console

import secagg
from dp.accounting import AccountantKind
from dp.distributed import Mechanism
from dp.ledger import PrivacyLevel
from fl.config import Device, ModelName, Partition, RunConfig
from fl.console import phase_progress, render_aggregation
from fl.demo import run_aggregation_demo
from fl.errors import FLError

__all__ = ["build_parser", "main"]

_PHASES = [p.value for p in secagg.Phase]


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_run_parser(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run",
        help="federated training with secure weighted averaging (the main job)",
        description=(
            "Train a model over a federation of in-process clients. Each round the server samples "
            "a cohort, each client trains locally from the global model, and the updates are "
            "averaged with weights n_k/n (FedAvg) through secure aggregation: the server only "
            "ever sees the sum. Clients drop out at random protocol phases. With no flags: 10 "
            "clients on non-IID (Dirichlet 0.5) handwritten digits, 20 rounds, 10%% dropout. "
            "Settings come from the defaults, then --config FILE, then the flags below. Output: "
            "config.toml, metrics.jsonl, summary.json, training.png and a checkpoint per round."
        ),
        epilog=(
            "examples:\n"
            "  privagg run                                  # the default federation\n"
            "  privagg run --clients 50 --fraction 0.2 --rounds 40 --model cnn\n"
            "  privagg run --no-secure --out runs/plain     # plaintext FedAvg, for comparison\n"
            "  privagg run --resume                         # continue the latest run in runs/"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--config", metavar="FILE", help="TOML configuration (see config.toml of any run)"
    )
    run.add_argument("--clients", type=int, help="number of clients (default 10)")
    run.add_argument("--rounds", type=int, help="training rounds (default 20)")
    run.add_argument(
        "--fraction", type=float, help="fraction of clients sampled per round, in (0, 1]"
    )
    run.add_argument(
        "--per-round", type=int, help="clients sampled per round (a count; overrides --fraction)"
    )
    run.add_argument(
        "--dropout", type=float, help="probability that a sampled client drops out (0.1)"
    )
    run.add_argument("--model", choices=[m.value for m in ModelName], help="reference model (mlp)")
    run.add_argument(
        "--partition", choices=[p.value for p in Partition], help="data split (dirichlet)"
    )
    run.add_argument(
        "--alpha", type=float, help="Dirichlet concentration: smaller is more skewed (0.5)"
    )
    run.add_argument(
        "--secure",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="secure aggregation on (default) or plaintext FedAvg",
    )
    run.add_argument(
        "--device", choices=[d.value for d in Device], help="where clients train (auto)"
    )
    run.add_argument(
        "--seed", type=int, help="seed of data split, sampling, dropouts, training (0)"
    )
    run.add_argument("--out", metavar="DIR", help="output folder (default: a new runs/run-<time>)")
    run.add_argument(
        "--resume", action="store_true", help="continue the run in --out (or the latest in runs/)"
    )
    privacy = run.add_argument_group(
        "differential privacy",
        "sample level: DP-SGD (Opacus) on every client, epsilon per record; client level: each "
        "client clips its update and adds integer noise before masking, epsilon per client",
    )
    privacy.add_argument(
        "--dp", choices=[v.value for v in PrivacyLevel], help="privacy level (none)"
    )
    privacy.add_argument("--epsilon", type=float, help="target epsilon over the whole run")
    privacy.add_argument("--delta", type=float, help="delta (1e-5); must be below 1/n")
    privacy.add_argument(
        "--noise-multiplier", type=float, help="fixed noise instead of a target epsilon"
    )
    privacy.add_argument(
        "--clip", type=float, help="per-sample gradient bound, or update L2 bound (1.0)"
    )
    privacy.add_argument(
        "--max-epsilon", type=float, help="stop, checkpointed, before a round could pass it"
    )
    privacy.add_argument(
        "--accountant",
        choices=[v.value for v in AccountantKind],
        help="rdp (default), rdp-classic or prv",
    )
    privacy.add_argument(
        "--mechanism",
        choices=[v.value for v in Mechanism],
        help="client-level noise: skellam or ddg",
    )


_RUN_FLAGS = {
    "clients": "training.clients",
    "rounds": "training.rounds",
    "fraction": "training.fraction",
    "per_round": "training.per_round",
    "dropout": "secure.dropout",
    "model": "model.name",
    "partition": "data.partition",
    "alpha": "data.alpha",
    "secure": "secure.enabled",
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


def _run(args: argparse.Namespace, console: Console) -> int:
    from fl.config import RunConfig, load_config
    from fl.console import render_run, round_header, round_progress
    from fl.simulation import latest_run_folder, new_run_folder, prepare_output, run_federation

    overrides = {
        key: getattr(args, flag)
        for flag, key in _RUN_FLAGS.items()
        if getattr(args, flag) is not None
    }
    if args.resume:
        folder = args.out or latest_run_folder()
        if folder is None:
            console.print("[red]error:[/] no run to resume under runs/; pass --out DIR")
            return 2
        config = load_config(f"{folder}/config.toml").with_overrides(
            {**overrides, "out": str(folder)}
        )
    else:
        config = load_config(args.config) if args.config else RunConfig()
        config = config.with_overrides(overrides)
    if config.out is None:
        config = config.with_overrides({"out": str(new_run_folder())})
    prepare_output(config, resume=args.resume)  # refuse a clash before printing anything
    training = config.training
    mode = "secure aggregation" if config.secure.enabled else "plaintext FedAvg"
    console.print(
        f"[bold]privagg run[/]: {training.clients} clients ({training.cohort_size} per round), "
        f"{config.data.dataset.value} {config.data.partition.value}"
        + (f"({config.data.alpha})" if config.data.partition.value == "dirichlet" else "")
        + f", {config.model.name.value}, {training.rounds} rounds, {mode}, "
        f"dropout {config.secure.dropout:.0%}, seed {config.seed}" + _privacy_summary(config)
    )
    console.print(
        round_header(with_epsilon=config.privacy.level is not PrivacyLevel.NONE), highlight=False
    )
    with round_progress(console, total=training.rounds, done=0) as on_round:
        result = run_federation(config, resume=args.resume, on_round=on_round)
    render_run(console, result)
    return 0


def _add_sweep_parser(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="privacy-budget experiment: accuracy against epsilon",
        description=(
            "Train the federation once per (epsilon, seed), in parallel processes, each in its own "
            "folder under --out, plus a non-private reference (epsilon inf); then write sweep.csv, "
            "sweep.json and accuracy_vs_epsilon.png and print the table. Run it again with the "
            "same --out to resume: finished runs are skipped, interrupted ones resume."
        ),
        epilog="example:\n  privagg sweep --epsilons 0.5,1,2,4,8,inf --level sample --seeds 3 --jobs 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument(
        "--epsilons", default="0.5,1,2,4,8,inf", help="comma-separated targets (inf: no DP)"
    )
    sweep.add_argument(
        "--level", choices=["sample", "client"], default="sample", help="privacy level"
    )
    sweep.add_argument(
        "--seeds", type=int, default=3, help="repetitions per epsilon (seeds 0..N-1)"
    )
    sweep.add_argument("--config", metavar="FILE", help="TOML configuration of every run")
    sweep.add_argument("--rounds", type=int, help="training rounds of every run")
    sweep.add_argument("--clients", type=int, help="clients of every run")
    sweep.add_argument(
        "--out", metavar="DIR", help="sweep folder (default: a new runs/sweep-<time>)"
    )
    sweep.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel processes")


def _sweep(args: argparse.Namespace, console: Console) -> int:
    import math
    import time
    from pathlib import Path

    from fl.config import load_config
    from fl.console import render_sweep
    from fl.sweep import SweepRow, parse_epsilons, plan_sweep, run_sweep, summarise, write_outputs

    if args.seeds < 1 or args.jobs < 1:
        console.print("[red]error:[/] --seeds and --jobs must be at least 1")
        return 2
    base = load_config(args.config) if args.config else RunConfig()
    overrides = {
        k: v for k, v in (("training.rounds", args.rounds), ("training.clients", args.clients)) if v
    }
    base = base.with_overrides(overrides)
    level = PrivacyLevel(args.level)
    out = Path(args.out or time.strftime("runs/sweep-%Y%m%d-%H%M%S"))
    points = plan_sweep(
        base, epsilons=parse_epsilons(args.epsilons), level=level, seeds=args.seeds, out=out
    )
    console.print(
        f"[bold]privagg sweep[/]: {len(points)} runs ({args.level}-level DP), {args.jobs} at a time, in {out}/"
    )

    def report(row: SweepRow, cached: bool) -> None:
        eps = "inf" if math.isinf(row.epsilon) else f"{row.epsilon:g}"
        note = " (already done)" if cached else f" in {row.wall_seconds:.1f} s"
        console.print(
            f"  epsilon {eps:>5} seed {row.seed}: accuracy {100 * row.final_accuracy:.1f}%{note}"
        )

    rows = run_sweep(points, jobs=args.jobs, on_result=report)
    write_outputs(out, rows, level=level)
    render_sweep(console, summarise(rows), level=args.level, delta=base.privacy.delta)
    console.print(f"written to {out}/: sweep.csv, sweep.json, accuracy_vs_epsilon.png")
    return 0


def _audit(args: argparse.Namespace, console: Console) -> int:
    from pathlib import Path

    from fl.audit_report import audit_progress, build_report, render_markdown, write_report
    from fl.config import load_config

    config = load_config(args.config) if args.config else RunConfig()
    console.print(
        "[bold]privagg audit[/]: empirical privacy audit"
        + ("" if args.no_tests else " and backing tests")
    )
    with audit_progress(console) as progress:
        report = build_report(config, run_tests=not args.no_tests, progress=progress)
    write_report(Path(args.out), report)
    console.print(render_markdown(report), markup=False, highlight=False)
    console.print(f"written to {args.out}/: audit.md, audit.json")
    failed = any(result["failed"] for result in (report["claims"] or {}).values())
    return 1 if failed else 0


def _privacy_summary(config: RunConfig) -> str:
    privacy = config.privacy
    if privacy.level is PrivacyLevel.NONE:
        return ""
    target = (
        f"epsilon {privacy.epsilon}"
        if privacy.epsilon
        else f"noise multiplier {privacy.noise_multiplier}"
    )
    return f", {privacy.level.value}-level DP ({target}, delta {privacy.delta:g}, {privacy.accountant.value})"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``privagg`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="privagg",
        description="Privacy-preserving federated learning: secure aggregation and differential privacy.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run_parser(commands)
    _add_sweep_parser(commands)
    audit = commands.add_parser(
        "audit",
        help="guarantee report: threat model, parameters, empirical privacy audit, backing tests",
        description=(
            "Write audit.md and audit.json for a configuration: the threat model; n, t, k, ring "
            "and dropout tolerance; identities; the DP level with (epsilon, delta) and accountant; "
            "the one-run empirical audit's epsilon lower bound (Steinke et al. 2023); and, for "
            "each claim, the tests that back it and their result (runs pytest in a checkout)."
        ),
    )
    audit.add_argument(
        "--config", metavar="FILE", help="TOML configuration (default: the default run)"
    )
    audit.add_argument("--out", metavar="DIR", default="runs/audit", help="report folder")
    audit.add_argument("--no-tests", action="store_true", help="skip running the backing tests")
    aggregate = commands.add_parser(
        "aggregate",
        help="run one secure-aggregation round over in-process clients and check the sum",
        description=(
            "Run one round of secure aggregation (Bonawitz et al. 2017, SecAgg+ graph of Bell et "
            "al. 2020) with every client in this process, passing real byte messages. Clients "
            "drop out as asked; the server unmasks the sum of the survivors' vectors, which is "
            "checked against the plaintext sum. Threshold and neighbours default to the rules in "
            "SECURITY.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
        "--threshold", type=_positive, help="Shamir threshold t (default: recommended)"
    )
    aggregate.add_argument(
        "--neighbours", type=_positive, help="neighbours k; n-1 = complete graph"
    )
    aggregate.add_argument("--ring-bits", type=int, default=32, help="sum modulo 2^b")
    aggregate.add_argument(
        "--identities",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Ed25519 client identities: signed keys and messages plus the consistency check",
    )
    aggregate.add_argument("--seed", type=int, help="replay protocol randomness (demos only)")
    return parser


def _aggregate(args: argparse.Namespace, console: Console) -> int:
    phase = secagg.Phase(args.dropout_phase)
    if phase is secagg.Phase.CONSISTENCY_CHECK and not args.identities:
        console.print("[red]error:[/] the consistency-check phase exists only with --identities")
        return 2
    console.print(
        f"[bold]privagg aggregate[/]: {args.clients} clients, d={args.dim:,}, ring Z_2^{args.ring_bits}, "
        f"{args.dropout:.0%} dropping out in {phase.value}, identities "
        f"{'on' if args.identities else 'off'}"
    )
    with phase_progress(console) as progress:
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
    console.print(
        f"graph: {'complete (SecAgg)' if config.complete_graph else f'{config.neighbours}-regular (SecAgg+)'}"
        f", threshold t={config.threshold}"
    )
    render_aggregation(console, outcome)
    return 0 if outcome.correct else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``privagg`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(soft_wrap=True)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "run":
            return _run(args, console)
        if args.command == "sweep":
            return _sweep(args, console)
        if args.command == "audit":
            return _audit(args, console)
        return _aggregate(args, console)
    except FLError as error:
        console.print(f"[red]error:[/] {error}")
        return 2
    except secagg.ThresholdNotMet as error:
        console.print(f"[red]round failed:[/] {error}\nfix: fewer dropouts, or a lower --threshold")
        return 1
    except (secagg.ConfigurationError, ValueError) as error:
        console.print(f"[red]error:[/] {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
