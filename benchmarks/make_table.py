"""Renders the JSON records of bench_segment.py as the markdown table of BENCHMARKS.md.

Records of other scripts in the same folder are skipped.

    python benchmarks/make_table.py benchmarks/results/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(record: dict) -> str:
    def seconds(key):
        return f"{record[key]:.1f}" if key in record else "not run"

    fraction = record.get("fraction_of_peak")
    return " | ".join([
        record["machine"], f"`{record['command']}`", record["dtype"],
        seconds("naive_s"), seconds("optimized_s"),
        f"{record['speedup']:.2f}x" if "speedup" in record else "-",
        f"{record['peak_memory_gb']:.2f}",
        f"{record['flops_per_image'] / 1e12:.3f}",
        f"{fraction:.1%}" if fraction is not None else "not recorded",
    ])


def main(paths: list[str]) -> int:
    print("| machine | command | dtype | naive s/image | optimized s/image | ratio | "
          "peak memory GB | TFLOP/image | fraction of peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in sorted(paths):
        record = json.loads(Path(path).read_text())
        if "optimized_s" in record:  # other scripts' records (agreement, ...) share the folder
            print("| " + row(record) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
