"""Produce the README's results section: run the benchmark, keep its JSON and plot, write Markdown.

    PYTHONPATH=. python3 benchmarks/readme_results.py                 # default run (about a minute)
    PYTHONPATH=. python3 benchmarks/readme_results.py --quick         # any memory_ops.bench options
    PYTHONPATH=. python3 benchmarks/readme_results.py --from benchmarks/results/bench.json
                                                                      # re-render, no new run

Writes benchmarks/results/bench.json (every raw timing, machine facts), bench.png (the plot) and
bench.md (the command, the machine, the allocation/compute table, the largest size's throughput
table and the one-line summaries) and prints bench.md. Run from the repository root.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the in-place build, also without PYTHONPATH=.

from memory_ops import bench  # noqa: E402
OUT = ROOT / "benchmarks" / "results"


def largest_size_only(doc):
    """The document restricted to its largest size (for a short throughput table)."""
    top = max(doc["config"]["sizes"])
    small = dict(doc)
    small["config"] = dict(doc["config"], sizes=[top])
    small["measurements"] = [m for m in doc["measurements"] if m["size"] == top]
    return small


def markdown(doc, command):
    parts = [
        f"Made with `{command}` on {doc['created_utc'][:10]} ({doc['duration_s']:.0f} s):",
        "",
        f"_{bench.machine_summary(doc)}_",
        "",
    ]
    table = bench.decomposition_table(doc)
    if table is not None:
        parts += [bench.markdown_table(table), ""]
    parts += [bench.markdown_table(bench.throughput_table(largest_size_only(doc))), ""]
    parts += [f"- {line}" for line in bench.story(doc["decomposition"], doc["measurements"])]
    parts += [f"- note: {note}" for note in doc["notes"]]
    parts += ["", "![allocation against compute, and GB/s against size](benchmarks/results/bench.png)", ""]
    return "\n".join(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", metavar="JSON", help="re-render an earlier run instead of running")
    args, bench_args = parser.parse_known_args()
    OUT.mkdir(parents=True, exist_ok=True)
    json_path, png_path, md_path = OUT / "bench.json", OUT / "bench.png", OUT / "bench.md"
    if args.source:
        doc = json.loads(Path(args.source).read_text())
        command = " ".join(doc["command"])
    else:
        rel = lambda p: str(p.relative_to(ROOT))  # noqa: E731
        cmd = ["-m", "memory_ops.bench", *bench_args, "--json", rel(json_path), "--plot", rel(png_path)]
        rc = subprocess.run([sys.executable, *cmd], cwd=ROOT).returncode
        if rc != 0:
            return rc
        doc = json.loads(json_path.read_text())
        command = "python3 " + " ".join(cmd)
    bench.plot(doc, png_path)
    md_path.write_text(markdown(doc, command))
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
