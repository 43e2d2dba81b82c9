"""When should scale and add stream their output (non-temporal stores)? Times scale_copy(out=) and
add_arrays(out=) on float64 with streaming forced on (threshold 0) and off (no threshold), over
operand footprints (inputs plus output) from 1/8 to 8 times the last-level cache, interleaved.
Two columns per op: the op alone, and the op followed by a read of its output (safe_sum(out)), the
case where an output left in cache pays off.

    PYTHONPATH=. python3 benchmarks/streaming.py [--repeat N]

The default threshold (kernels/cache.hpp: streaming from a footprint of one LLC) and README
"Streaming stores" keep the table this printed.
"""

import argparse
import statistics
import time

import numpy as np

import memory_ops
from memory_ops import _core

NEVER = 1 << 62


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    llc = memory_ops.info()["llc_bytes"]
    print(f"speed-up of streaming stores over ordinary ones (ordinary / streamed time), float64, "
          f"{memory_ops.get_num_threads()} threads, LLC {llc >> 20} MiB, median of {args.repeat}")
    print(f"{'footprint / LLC':<16}{'scale':>8}{'+read':>8}{'add':>8}{'+read':>8}")
    previous = _core._set_stream_threshold(NEVER)
    try:
        for ratio in (0.125, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 4, 8):
            row = []
            for operands, op in ((2, "scale"), (3, "add")):
                n = int(ratio * llc / operands / 8)
                rng = np.random.default_rng(0)
                a, b, out = rng.random(n), rng.random(n), np.empty(n)
                run = (lambda: memory_ops.scale_copy(a, 2.0, out=out)) if op == "scale" else \
                      (lambda: memory_ops.add_arrays(a, b, out=out))
                calls = max(1, (64 << 20) // (operands * 8 * n))
                for consume in (False, True):
                    samples = {0: [], NEVER: []}
                    for r in range(args.repeat):
                        for threshold in ((0, NEVER) if r % 2 else (NEVER, 0)):
                            _core._set_stream_threshold(threshold)
                            run()
                            t0 = time.perf_counter()
                            for _ in range(calls):
                                run()
                                if consume:
                                    memory_ops.safe_sum(out)
                            samples[threshold].append((time.perf_counter() - t0) / calls)
                    row.append(statistics.median(samples[NEVER]) / statistics.median(samples[0]))
            print(f"{ratio:<16g}" + "".join(f"{x:>8.2f}" for x in row))
    finally:
        _core._set_stream_threshold(previous)


if __name__ == "__main__":
    main()
