"""Fresh outputs from memory_ops' huge-page handler against NumPy's default one, same kernel.

    PYTHONPATH=. python3 benchmarks/hugepages.py

Fresh results of 32 MiB and more are mapped on 2 MiB boundaries and advised huge as a whole
(bindings/alloc.cpp). Here each op's fresh call (that handler) is timed against the same op writing
into np.empty_like(a) (NumPy's handler: huge pages advised from the buffer's second 4 KiB page on,
the partial huge pages at both ends in 4 KiB pages), interleaved, medians. Both include the page
faults of a new output; they differ only in where its memory comes from. Also prints the 4 KiB pages
each way faults (minor faults per call).
"""

import argparse
import sys
from pathlib import Path

import numpy as np

import memory_ops

sys.path.insert(0, str(Path(__file__).resolve().parent))
from targets import interleaved  # noqa: E402


def minor_faults():
    with open("/proc/self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def faults_per_call(fn, calls=5):
    before = minor_faults()
    for _ in range(calls):
        fn()
    return (minor_faults() - before) / calls


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15, help="interleaved repeats (default 15)")
    args = parser.parse_args()
    print(f"memory_ops {memory_ops.__version__}, {memory_ops.get_num_threads()} threads; "
          f"median ms of {args.repeat} interleaved samples; faults: minor page faults per call")
    print(f"{'dtype':8} {'n':>11} {'op':6} {'huge-page handler':>18} {'NumPy handler':>14} {'speed-up':>9} "
          f"{'faults':>7} {'faults':>7}")
    # Outputs of 32 MiB and more (smaller ones come from NumPy's handler either way).
    for n, dtype in ((5_000_000, np.float64), (1 << 23, np.float32), (1 << 25, np.float64), (1 << 25, np.float32)):
        a = np.random.default_rng(0).random(n).astype(dtype)
        b = a.copy()
        ops = {
            "scale": (lambda: memory_ops.scale_copy(a, 2.0),
                      lambda: memory_ops.scale_copy(a, 2.0, out=np.empty_like(a))),
            "add": (lambda: memory_ops.add_arrays(a, b),
                    lambda: memory_ops.add_arrays(a, b, out=np.empty_like(a))),
        }
        for op, (ours, numpys) in ops.items():
            t = interleaved({"ours": ours, "numpy": numpys}, args.repeat)
            print(f"{dtype.__name__:8} {n:>11,} {op:6} {t['ours'] * 1e3:>18.2f} {t['numpy'] * 1e3:>14.2f} "
                  f"{t['numpy'] / t['ours']:>9.2f} {faults_per_call(ours):>7.0f} {faults_per_call(numpys):>7.0f}")


if __name__ == "__main__":
    main()
