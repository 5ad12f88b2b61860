"""Secure all-reduce against gloo's plain all-reduce: per-step time, and the session set-up.

    python -m benchmarks.distributed                  # d = 1e5, 1e6, 1e7 on 2, 4, 8 ranks
    python -m benchmarks.distributed --quick          # d = 1e4 on 2 and 4 ranks (smoke test)
    python -m benchmarks.distributed --ranks 4 --dims 1000000

For each number of ranks, that many processes join a gloo group on 127.0.0.1 (the store is
hosted by this process, as torchrun's agent hosts it). For each d, every rank sums a float32
vector of d values ``steps`` times with ``dist.all_reduce(op=SUM)`` and ``steps`` times with
:class:`fl.engines.distributed.SecureAllReduce`, alternately (after one warm-up step each, the
secure one agreeing the session's keys); a barrier precedes every timed step, so a step's time
is the slowest rank's. One JSON object per
(ranks, d) on stdout, then a table on stderr.

Fields: ranks, dim, ring_bits, shared_unmask (whether ranks unmasked one slice each), steps, plain_s and secure_s (median per-step wall time, slowest rank),
plain_words_s (gloo's all-reduce of d ring words, int32 or int64: the secure step's transport),
ratio (secure / plain), plain_cpu_s and secure_cpu_s (CPU seconds of the rank's process, all
threads, per step: medians, the busiest rank; what a step costs whatever else shares the cores),
setup_s (the one-time key agreement of the session, slowest rank),
mask_s, transport_s, control_s, unmask_s (the secure step's parts, medians, slowest rank),
precision_bits, max_error (largest |secure - plain| over the vector, last step).
Every rank is one process with one thread: ranks beyond the machine's cores share them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

DIMS = (100_000, 1_000_000, 10_000_000)
RANKS = (2, 4, 8)


def _steps(dim: int) -> int:
    return 20 if dim <= 100_000 else 10 if dim <= 1_000_000 else 4


def _rank(
    rank: int, world: int, port: int, dims: list[int], ring_bits: int, shared: int, out: str
) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    from fl.engines.distributed import DISTRIBUTED_POLICY, SecureAllReduce

    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, world, False, timeout=timedelta(seconds=120))
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    # 2 ranks are below the default floor (each learns the other's input from the sum): the
    # benchmark's random vectors are no secret, so it lowers the floor for that case only
    policy = replace(DISTRIBUTED_POLICY, min_clients=2) if world == 2 else None
    reducer = SecureAllReduce(
        timeout=120.0, policy=policy, ring_bits=ring_bits, shared_unmask_ranks=shared
    )
    generator = torch.Generator().manual_seed(rank)
    rows = []
    for dim in dims:
        values = torch.randn(dim, generator=generator)
        plain_times, words_times, secure_times, parts = [], [], [], []
        plain_cpu, secure_cpu = [], []
        words = torch.zeros(dim, dtype=reducer.encoding.dtype)
        for repeat in range(_steps(dim) + 1):  # interleaved, so that load changes hit all
            plain = values.clone()
            dist.barrier()
            started, cpu = time.perf_counter(), time.process_time()
            dist.all_reduce(plain)
            if repeat:
                plain_times.append(time.perf_counter() - started)
                plain_cpu.append(time.process_time() - cpu)
            dist.barrier()
            started = time.perf_counter()
            dist.all_reduce(words)  # what the secure step's transport moves: ring words
            if repeat:
                words_times.append(time.perf_counter() - started)
            secure = values.clone()
            dist.barrier()
            started, cpu = time.perf_counter(), time.process_time()
            report = reducer(secure)
            if repeat:
                secure_times.append(time.perf_counter() - started)
                secure_cpu.append(time.process_time() - cpu)
                parts.append(report)
            elif report.setup_seconds and not rows:
                setup = report.setup_seconds
        rows.append(
            {
                "dim": dim,
                "steps": len(secure_times),
                "plain_s": statistics.median(plain_times),
                "plain_words_s": statistics.median(words_times),
                "plain_cpu_s": statistics.median(plain_cpu),
                "secure_cpu_s": statistics.median(secure_cpu),
                "secure_s": statistics.median(secure_times),
                "mask_s": statistics.median(r.mask_seconds for r in parts),
                "transport_s": statistics.median(r.transport_seconds for r in parts),
                "control_s": statistics.median(r.control_seconds for r in parts),
                "unmask_s": statistics.median(r.unmask_seconds for r in parts),
                "precision_bits": parts[-1].precision_bits,
                "max_error": (secure - plain).abs().max().item(),
            }
        )
    Path(out, f"{rank}.json").write_text(json.dumps({"setup_s": setup, "rows": rows}))
    dist.barrier()
    os._exit(0)


def run(
    world: int, dims: list[int], timeout: float, ring_bits: int = 32, shared: int = 16
) -> list[dict]:
    """Start ``world`` ranks, benchmark every d, stop them all; the per-(ranks, d) rows."""
    store = dist.TCPStore(
        "127.0.0.1", 0, None, True, timeout=timedelta(seconds=120), wait_for_workers=False
    )
    context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as out:
        processes = [
            context.Process(
                target=_rank,
                args=(rank, world, store.port, dims, ring_bits, shared, out),
                daemon=True,
            )
            for rank in range(world)
        ]
        try:
            for process in processes:
                process.start()
            deadline = time.monotonic() + timeout
            for process in processes:
                process.join(max(0.0, deadline - time.monotonic()))
            if any(process.is_alive() for process in processes):
                raise TimeoutError(f"{world} ranks did not finish within {timeout:.0f} s")
        finally:
            for process in processes:
                if process.is_alive():
                    process.kill()
                process.join(10)
        results = [json.loads(Path(out, f"{rank}.json").read_text()) for rank in range(world)]
    rows = []
    for index, dim in enumerate(dims):
        per_rank = [result["rows"][index] for result in results]
        row = {"ranks": world, "dim": dim, "ring_bits": ring_bits, "shared_unmask": world >= shared}
        row["steps"] = per_rank[0]["steps"]
        for key in (
            "plain_s",
            "plain_words_s",
            "plain_cpu_s",
            "secure_s",
            "secure_cpu_s",
            "mask_s",
            "transport_s",
            "control_s",
            "unmask_s",
        ):
            row[key] = max(r[key] for r in per_rank)
        row["ratio"] = row["secure_s"] / row["plain_s"]
        row["setup_s"] = max(result["setup_s"] for result in results)
        row["precision_bits"] = per_rank[0]["precision_bits"]
        row["max_error"] = max(r["max_error"] for r in per_rank)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """A Markdown table of the rows."""
    lines = [
        "| ranks | d | ring | plain s | plain int s | secure s | ratio | plain CPU s | "
        "secure CPU s | mask s | transport s | control s | unmask s | set-up s | p | max error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['ranks']} | {r['dim']:,} | {r['ring_bits']} | {r['plain_s']:.4f} | "
            f"{r['plain_words_s']:.4f} | {r['secure_s']:.4f} | "
            f"{r['ratio']:.1f}x | {r['plain_cpu_s']:.4f} | {r['secure_cpu_s']:.4f} | "
            f"{r['mask_s']:.4f} | {r['transport_s']:.4f} | "
            f"{r['control_s']:.4f} | {r['unmask_s']:.4f} | {r['setup_s']:.3f} | "
            f"{r['precision_bits']} | {r['max_error']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="d = 1e4 on 2 and 4 ranks")
    parser.add_argument("--ranks", type=int, action="append", help="numbers of ranks to run")
    parser.add_argument("--dims", type=int, action="append", help="vector lengths to run")
    parser.add_argument(
        "--ring-bits", type=int, choices=(32, 64), default=32, help="the ring (default 32)"
    )
    parser.add_argument(
        "--shared-unmask-ranks",
        type=int,
        default=16,
        help="SecureAllReduce's shared_unmask_ranks (default 16; 2: always unmask by slices)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds one group of ranks may take"
    )
    args = parser.parse_args(argv)
    ranks = args.ranks or ([2, 4] if args.quick else list(RANKS))
    dims = args.dims or ([10_000] if args.quick else list(DIMS))
    if any(r < 2 for r in ranks) or any(d < 1 for d in dims):
        parser.error("--ranks must be >= 2 and --dims >= 1")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", file=sys.stderr)
    rows = []
    for world in ranks:
        print(f"{world} ranks: d = {', '.join(f'{d:,}' for d in dims)} ...", file=sys.stderr)
        for row in run(world, dims, args.timeout, args.ring_bits, args.shared_unmask_ranks):
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(table(rows), file=sys.stderr)
    print(f"load average {os.getloadavg()[0]:.2f} at the end", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
