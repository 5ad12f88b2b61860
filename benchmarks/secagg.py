"""Secure-aggregation benchmark: one JSON object per configuration on stdout.

    python -m benchmarks.secagg                 # the configurations of BENCHMARKS.md
    python -m benchmarks.secagg --quick         # small versions, for a smoke test
    python -m benchmarks.secagg --only n500-complete-10

Each configuration runs in a fresh subprocess so that ``peak_rss_mb`` is its own. All clients and
the server run in one process, one after another, through the real byte messages. Client inputs
are generated on demand, so memory reflects the protocol, not a stored copy of every input.

Fields: clients, dim, dropout, dropout_phase, neighbours, threshold, ring_bits, identities,
client_seconds (median compute per contributing client), server_seconds (server compute),
round_seconds (wall time of all phases), bytes_up_per_client (median), plaintext_bytes_per_client,
aes_ctr_gbps (raw AES-256-CTR keystream rate of this machine, measured in the same run: the limit),
mask_gbps (keystream bytes the clients expanded and added per second of masking),
mask_fraction_of_limit, peak_rss_mb, correct (sum checked against the plaintext sum).
With identities also: consistency_seconds and unmask_seconds (wall time of those phases, all
parties), signatures_per_request (median consistency signatures each unmask request carries,
i.e. what each client verifies) and global_quorum_signatures (what a global quorum above
(n + c) / 2 would make each client verify instead).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

import numpy as np

import secagg
from secagg import quorum
from secagg.graph import neighbour_index, neighbourhoods, random_permutation
from secagg.hazmat.prg import DEFAULT_CHUNK_BYTES, keystream

GB = 1e9


@dataclass(frozen=True)
class Configuration:
    name: str
    clients: int
    dim: int
    dropout: float
    neighbours: int | None  # None: the recommended SecAgg+ graph
    dropout_phase: str = secagg.Phase.MASKED_INPUT.value
    identities: bool = False
    ring_bits: int = 32


CONFIGURATIONS = [
    Configuration("n100-d1e6-10", 100, 1_000_000, 0.10, None),
    Configuration("n500-complete-10", 500, 100_000, 0.10, 499),
    Configuration("n500-complete-30", 500, 100_000, 0.30, 499),
    Configuration("n1000-sparse-10", 1000, 100_000, 0.10, None),
    Configuration("n100-d1e5-identities", 100, 100_000, 0.10, None, identities=True),
    Configuration("n100-complete-identities", 100, 100_000, 0.10, 99, identities=True),
    Configuration("n1000-sparse-identities", 1000, 100_000, 0.10, None, identities=True),
]
QUICK = [
    Configuration("quick-complete", 20, 10_000, 0.10, 19),
    Configuration("quick-sparse", 60, 10_000, 0.10, None, identities=True),
]


class GeneratedInputs(Mapping[int, np.ndarray]):
    """Client vectors made on access from the client id (16-bit values), never all in memory."""

    def __init__(self, clients: int, dim: int) -> None:
        self._clients, self._dim = clients, dim
        self._base = np.arange(dim, dtype=np.uint32) & np.uint32(0xFFFF)

    def __getitem__(self, client: int) -> np.ndarray:
        if not 1 <= client <= self._clients:
            raise KeyError(client)
        return self._base ^ np.uint32(client * 2654435761 & 0xFFFF)

    def __iter__(self) -> Iterator[int]:
        return iter(range(1, self._clients + 1))

    def __len__(self) -> int:
        return self._clients


def raw_aes_ctr_gbps(seconds: float = 1.0) -> float:
    """Peak AES-256-CTR keystream rate into a cache-resident buffer (the physical limit here)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    zeros = bytes(DEFAULT_CHUNK_BYTES)
    out = bytearray(DEFAULT_CHUNK_BYTES + 15)
    encryptor = Cipher(algorithms.AES(bytes(range(32))), modes.CTR(bytes(16))).encryptor()
    produced, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(256):
            encryptor.update_into(zeros, out)
        produced += 256 * len(zeros)
    return produced / (time.perf_counter() - started) / GB


def run(config: Configuration) -> dict:
    """Run one configuration in this process and return its measurements."""
    limit = raw_aes_ctr_gbps()
    inputs = GeneratedInputs(config.clients, config.dim)
    count = round(config.dropout * config.clients)
    order = random_permutation(config.clients, keystream(bytes(32), 32))
    dropouts = {secagg.Phase(config.dropout_phase): [u + 1 for u in order[:count]]} if count else {}
    result = secagg.aggregate(
        inputs,
        neighbours=config.neighbours,
        ring_bits=config.ring_bits,
        identities=config.identities,
        dropouts=dropouts,
    )
    expected = np.zeros(config.dim, dtype=np.uint32)
    for u in result.contributors:
        expected += inputs[u]
    contributors = sorted(result.contributors)
    mask_gbps = result.keystream_bytes / result.mask_seconds / GB
    word_bytes = result.config.word_dtype.itemsize
    return {
        "name": config.name,
        "clients": config.clients,
        "dim": config.dim,
        "dropout": config.dropout,
        "dropout_phase": config.dropout_phase,
        "neighbours": result.config.neighbours,
        "threshold": result.config.threshold,
        "ring_bits": config.ring_bits,
        "identities": config.identities,
        "client_seconds": round(
            statistics.median(result.client_seconds[u] for u in contributors), 4
        ),
        "server_seconds": round(result.server_seconds, 3),
        "round_seconds": round(sum(result.phase_seconds.values()), 2),
        "bytes_up_per_client": int(statistics.median(result.bytes_sent[u] for u in contributors)),
        "plaintext_bytes_per_client": config.dim * word_bytes,
        "aes_ctr_gbps": round(limit, 2),
        "mask_gbps": round(mask_gbps, 2),
        "mask_fraction_of_limit": round(mask_gbps / limit, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "correct": bool(np.array_equal(result.total, expected)),
        **(_consistency_costs(result) if config.identities else {}),
    }


def _consistency_costs(result: secagg.AggregationResult) -> dict:
    """What the per-neighbourhood consistency check costs, against a global quorum.

    The dropouts here happen after key sharing, so every client watches its whole closed
    neighbourhood and the signers are U3; the count is computed for a sample of clients.
    """
    config = result.config
    graph = neighbourhoods(config)
    signers = result.contributors
    sample = sorted(signers)[:: max(1, len(signers) // 50)]
    counts = [
        len(
            quorum.signers_to_verify(
                watched=graph[u] | {u},
                signers=signers,
                index=neighbour_index(config),
                threshold=config.threshold,
                trusted=u,
            )[0]
        )
        for u in sample
    ]
    corrupt = secagg.ClientPolicy().corrupt_neighbours(config)
    return {
        "consistency_seconds": round(result.phase_seconds[secagg.Phase.CONSISTENCY_CHECK], 2),
        "unmask_seconds": round(result.phase_seconds[secagg.Phase.UNMASK], 2),
        "signatures_per_request": int(statistics.median(counts)),
        "global_quorum_signatures": (config.num_clients + corrupt) // 2 + 1,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small configurations (smoke test)")
    parser.add_argument("--only", action="append", help="run only the named configuration(s)")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    chosen = [
        c for c in (QUICK if args.quick else CONFIGURATIONS) if not args.only or c.name in args.only
    ]
    if args.in_process:
        for config in chosen:
            print(json.dumps(run(config)), flush=True)
        return 0
    status = 0
    for config in chosen:
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks.secagg", "--in-process", "--only", config.name]
            + (["--quick"] if args.quick else []),
            capture_output=True,
            text=True,
        )
        if completed.returncode:
            print(
                json.dumps({**asdict(config), "error": completed.stderr.strip().splitlines()[-1:]}),
                flush=True,
            )
            status = 1
        else:
            print(completed.stdout.strip(), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
