"""The ``privagg`` command line: argument parsing only; the work lives in library functions."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console

import secagg
from fl.console import phase_progress, render_aggregation
from fl.demo import run_aggregation_demo

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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``privagg`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="privagg",
        description="Privacy-preserving federated learning: secure aggregation and differential privacy.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
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
    console = Console()
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return _aggregate(args, console)
    except secagg.ThresholdNotMet as error:
        console.print(f"[red]round failed:[/] {error}\nfix: fewer dropouts, or a lower --threshold")
        return 1
    except (secagg.ConfigurationError, ValueError) as error:
        console.print(f"[red]error:[/] {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
