"""Where should kernels stop being serial? Times each op at 1 thread and at 2+ threads (with the
serial threshold lifted) over sizes around the crossover, interleaved, and prints the smallest size
from which the team is consistently faster.

    PYTHONPATH=. python3 benchmarks/threshold.py [--repeat N]

The result is kernels/parallel.hpp's default_serial_threshold; README "Serial/parallel threshold"
keeps the table this printed.
"""

import argparse
import statistics
import time

import numpy as np

import memory_ops
from memory_ops import _core


def median_time(fn, repeat, calls):
    fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) / calls)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    team = max(2, memory_ops.get_num_threads())
    sizes = [1 << k for k in range(10, 20)]
    print(f"serial (1 thread) vs a team of {team}, float64, median of {args.repeat}; speed-up = serial / team")
    print(f"{'op':<18}" + "".join(f"{n:>9}" for n in sizes))
    previous = _core._set_serial_threshold(0)
    crossovers = []
    try:
        for op in ("scale_inplace", "scale_copy(out=)", "add_arrays(out=)", "safe_sum"):
            row = []
            for n in sizes:
                a = np.random.default_rng(0).random(n)
                out = np.empty_like(a)
                fn = {
                    "scale_inplace": lambda: memory_ops.scale_inplace(a, 1.0),
                    "scale_copy(out=)": lambda: memory_ops.scale_copy(a, 2.0, out=out),
                    "add_arrays(out=)": lambda: memory_ops.add_arrays(a, a, out=out),
                    "safe_sum": lambda: memory_ops.safe_sum(a),
                }[op]
                calls = max(1, (1 << 20) // n)
                t = {1: [], team: []}
                for _ in range(3):  # interleave the two thread counts
                    for k in t:
                        with memory_ops.threads(k):
                            t[k].append(median_time(fn, args.repeat // 3 or 1, calls))
                row.append(min(t[1]) / min(t[team]))
            print(f"{op:<18}" + "".join(f"{r:>9.2f}" for r in row))
            # Smallest size from which every larger size gains at least 10%.
            cross = next((n for i, n in enumerate(sizes) if all(r > 1.1 for r in row[i:])), None)
            crossovers.append(cross)
    finally:
        _core._set_serial_threshold(previous)
    found = [c for c in crossovers if c is not None]
    print(f"\nsmallest size with a consistent >10% gain, per op: {crossovers}")
    if found:
        print(f"suggested serial threshold (elements): {max(found)}")


if __name__ == "__main__":
    main()
