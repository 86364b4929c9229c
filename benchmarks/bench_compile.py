"""Eager against compiled (``emerdiff_lab.compile_model``), interleaved in one process.

    python benchmarks/bench_compile.py --model tiny --image-size 256 --num-masks 16 \
        --device cpu --repeats 3 --json benchmarks/results/cpu-tiny-256-k16-compile-ab.json

Both models segment the same image in turns (eager, compiled, eager, ...), so that drift of the
machine's speed hits both alike; the first compiled run, which compiles, is timed apart. Writes
every time, the medians and their ratio. Delete ``$TMPDIR/torchinductor_$USER`` first to time a
cold compile: inductor keeps generated kernels on disk between processes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from bench_segment import add_workload_options, load, run_optimized, timed

import emerdiff_lab as edl
from emerdiff_lab.io import write_text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_options(parser)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each model")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)

    image = edl.load_image(edl.sample_images()["chelsea"], size=args.image_size)
    eager = load(args.model, args.device, args.dtype, args.configs)
    compiled = edl.compile_model(load(args.model, args.device, args.dtype, args.configs))
    cfg = eager.default_config.replace(num_masks=args.num_masks)
    record = {"model": args.model, "image_size": args.image_size, "num_masks": args.num_masks,
              "device": args.device, "dtype": args.dtype, "torch": torch.__version__,
              "command": " ".join(["bench_compile.py", *(argv or sys.argv[1:])])}
    record["first_compiled_run_s"], _ = timed(run_optimized, compiled, image, cfg)
    run_optimized(eager, image, cfg)  # warm-up of the eager model, as the compiled one had
    times = {"eager_s": [], "compiled_s": []}
    for _ in range(args.repeats):
        for key, model in (("eager_s", eager), ("compiled_s", compiled)):
            times[key].append(timed(run_optimized, model, image, cfg)[0])
    record.update(times)
    record["eager_median_s"] = statistics.median(times["eager_s"])
    record["compiled_median_s"] = statistics.median(times["compiled_s"])
    record["speedup"] = round(record["eager_median_s"] / record["compiled_median_s"], 3)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.json, json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
