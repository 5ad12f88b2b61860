"""Mask expansion against the raw AES-256-CTR rate, over chunk and group sizes.

    python -m benchmarks.prg

Prints one JSON object per (dim, chunk_bytes, group): the rate of ``prg.accumulate`` over 81
seeds (k = 80 neighbours plus the self mask), the raw keystream rate measured just before, and
their ratio. The defaults of ``secagg.hazmat.prg`` come from this grid.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from benchmarks.secagg import raw_aes_ctr_gbps
from secagg.hazmat import prg

SEEDS = 81
GRID = [
    (1 << 15, 16),
    (1 << 15, 32),
    (1 << 16, 8),
    (1 << 16, 16),
    (1 << 16, 32),
    (1 << 17, 8),
    (1 << 17, 16),
    (1 << 18, 4),
]


def main() -> None:
    limit = raw_aes_ctr_gbps()
    terms = [prg.MaskTerm(os.urandom(32), subtract=i % 2 == 0) for i in range(SEEDS)]
    for dim in (100_000, 1_000_000):
        out = np.zeros(dim, dtype=np.uint32)
        for chunk_bytes, group in GRID:
            best = float("inf")
            for _ in range(5):
                started = time.perf_counter()
                prg.accumulate(out, terms, chunk_bytes=chunk_bytes, group=group)
                best = min(best, time.perf_counter() - started)
            rate = SEEDS * out.nbytes / best / 1e9
            print(
                json.dumps(
                    {
                        "dim": dim,
                        "chunk_bytes": chunk_bytes,
                        "group": group,
                        "mask_gbps": round(rate, 2),
                        "aes_ctr_gbps": round(limit, 2),
                        "fraction": round(rate / limit, 3),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
