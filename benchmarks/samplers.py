"""Integer noise samplers: draws per second of the Skellam and discrete Gaussian samplers.

    python -m benchmarks.samplers [--sizes 100000,1000000] [--repeats 5]

One JSON object per (mechanism, size): the median seconds over repeats of one call drawing
``size`` coordinates from ``os.urandom``-keyed randomness at the per-client noise level the
encoder uses (scaled standard deviation 256, variance 65,536), and the draws per second. The
script only imports ``dp.distributed.sample_skellam`` / ``sample_discrete_gaussian``, so it runs
unchanged against an older checkout (``PYTHONPATH=<checkout> python benchmarks/samplers.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

from dp.distributed import sample_discrete_gaussian, sample_skellam

STD = 256.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    samplers = {
        "skellam": lambda n: sample_skellam(STD**2, n),
        "ddg": lambda n: sample_discrete_gaussian(STD, n),
    }
    for size in (int(s) for s in args.sizes.split(",")):
        for name, draw in samplers.items():
            draw(1000)  # tables, imports
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                values = draw(size)
                times.append(time.perf_counter() - started)
            seconds = statistics.median(times)
            print(
                json.dumps(
                    {
                        "mechanism": name,
                        "coordinates": size,
                        "std": STD,
                        "median_seconds": round(seconds, 4),
                        "draws_per_second": round(size / seconds),
                        "sample_std": round(float(values.std()), 2),
                        "expected_std": round(math.sqrt(STD**2), 2),
                    }
                )
            )


if __name__ == "__main__":
    main()
