"""Latency of the perturbation explorer: a new single-cell perturbation (a cache miss, what a
slider move or a click costs), a revisited one (a cache hit), and the "Segment" button; JSON out.
Also, interleaved with the new cells, the same cells computed without the session's recorded
reference pass (CPU time), and the cost of recording one (once per t_m).

    python benchmarks/bench_explorer.py --json benchmarks/results/explorer-toyworld-cpu.json

Default: the trained ToyWorld model on the explorer's default image (a held-out test scene) at
its default setting (t_m = 481, lambda = 10, injection on). Each timed perturbation uses a cell
never computed before in the session, so every one is a real computation; the record keeps every
time (wall clock, and the CPU time of this process), their medians, and the load average around
the run (the cores may be shared: with one torch thread the CPU time is about what the wall clock
would read on an idle core).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


def distinct_cells(grid: tuple[int, int], n: int) -> list[tuple[int, int]]:
    """``n`` different cells spread over the grid (a stride through it, row-major)."""
    h, w = grid
    if n > h * w:
        raise ValueError(f"asked for {n} distinct cells of a {h}x{w} grid")
    stride = max(1, (h * w) // n)
    return [divmod((i * stride + stride // 2) % (h * w), w) for i in range(n)]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    from emerdiff_lab.models import load_model
    from emerdiff_lab.modulation import perturb, record_reference
    from emerdiff_lab.assembly import upsample_bilinear
    from emerdiff_lab.widgets import DEFAULT_SCENE, default_scene, explorer_session

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toyworld")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=9,
                        help="new cells to perturb (default 9; the median is reported)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="side the model sees (default: the model's native size)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--no-segment", action="store_true", help="skip timing Segment")
    parser.add_argument("--json", type=Path, default=None, help="write the record here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    start = time.perf_counter()
    model = load_model(args.model, device=args.device)
    load_seconds = time.perf_counter() - start
    size = args.image_size or model.native_image_size
    image, labels = default_scene(size)
    start = time.perf_counter()
    session = explorer_session(model, image, labels=labels, image_size=size)
    prepare_seconds = time.perf_counter() - start

    grid = session.region_grid()
    cells = distinct_cells(grid, args.repeats + 1)
    session.perturbation(session.cell_region(*cells[0]))     # warm-up, not counted
    new_cell, new_cell_cpu, batched_cpu = [], [], []
    for cell in cells[1:]:
        start, cpu = time.perf_counter(), time.process_time()
        session.perturbation(session.cell_region(*cell))
        new_cell.append(time.perf_counter() - start)
        new_cell_cpu.append(time.process_time() - cpu)
        # A/B, interleaved: the same cell the way it was computed before the session recorded
        # its reference pass (the reference rides in every call as a third batch element).
        cpu = time.process_time()
        perturb(model, session.inversion(), session.cell_region(*cell), session.cfg)
        batched_cpu.append(time.process_time() - cpu)
    start, cpu = time.perf_counter(), time.process_time()
    reference = record_reference(model, session.inversion(), session.cfg)
    record_seconds, record_cpu = time.perf_counter() - start, time.process_time() - cpu
    start = time.perf_counter()
    session.perturbation(session.cell_region(*cells[1]))
    cached = time.perf_counter() - start
    segment = None
    if not args.no_segment:
        start = time.perf_counter()
        labels = session.labels()
        segment = {"seconds": time.perf_counter() - start, "miou": session.miou(labels),
                   "naive_miou": session.miou(upsample_bilinear(session.masks(), size))}

    record = {
        "benchmark": "explorer", "model": args.model, "device": args.device,
        "scene_seed_index": DEFAULT_SCENE, "image_size": session.image_size,
        "grid": list(grid), "num_masks": int(session.masks().max()) + 1,
        "modulation_timestep": session.cfg.modulation_timestep,
        "modulation_strength": session.cfg.modulation_strength,
        "attention_injection": session.cfg.attention_injection,
        "new_cell_s": [round(s, 4) for s in new_cell],
        "new_cell_median_s": round(statistics.median(new_cell), 4),
        "new_cell_n": len(new_cell), "cached_s": round(cached, 6),
        # CPU seconds of this process: with one torch thread, about the wall time on an idle
        # core, whatever else shares the machine.
        "new_cell_cpu_s": [round(s, 4) for s in new_cell_cpu],
        "new_cell_cpu_median_s": round(statistics.median(new_cell_cpu), 4),
        "without_reference_pass_cpu_s": [round(s, 4) for s in batched_cpu],
        "without_reference_pass_cpu_median_s": round(statistics.median(batched_cpu), 4),
        # paid once per t_m and injection setting (the first cell at a new t_m)
        "record_reference_pass_s": round(record_seconds, 3),
        "record_reference_pass_cpu_s": round(record_cpu, 3),
        "reference_pass_mb": round(reference.nbytes / 2**20, 1),
        "segment": segment, "load_model_s": round(load_seconds, 2),
        "prepare_session_s": round(prepare_seconds, 2),
        "cpu": _cpu_name(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__, "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"new single-cell perturbation: median {record['new_cell_median_s']:.3f} s over "
          f"{len(new_cell)} cells (min {min(new_cell):.3f}, max {max(new_cell):.3f}; CPU time "
          f"median {record['new_cell_cpu_median_s']:.3f} s, without the recorded reference "
          f"pass {record['without_reference_pass_cpu_median_s']:.3f} s); cached "
          f"{cached * 1000:.2f} ms" + (f"; Segment {segment['seconds']:.1f} s" if segment else "")
          + f"; {record['cpu_cores']} cores, {record['torch_threads']} torch thread(s), load "
          f"average {record['load_average_before'][0]:.1f} before")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
