"""Latency of the perturbation explorer: a new single-cell perturbation (a cache miss, what a
slider move or a click costs), a revisited one (a cache hit), and the "Segment" button; JSON out.
Also, interleaved with the new cells, the same cells computed without the session's recorded
reference pass (CPU time), and the cost of recording one (once per t_m).

    python benchmarks/bench_explorer.py --json benchmarks/results/explorer-toyworld-cpu.json
    python benchmarks/bench_explorer.py --contended \
        --json benchmarks/results/explorer-toyworld-contended-cpu.json

Default: the trained ToyWorld model on the explorer's default image (a held-out test scene) at
its default setting (t_m = 481, lambda = 10, injection on). Each timed perturbation uses a cell
never computed before in the session, so every one is a real computation; the record keeps every
time (wall clock, and the CPU time of this process), their medians, and the load average around
the run (the cores may be shared: with one torch thread the CPU time is about what the wall clock
would read on an idle core).

``--contended`` measures twice in one record: first as above (``"modes"["alone"]``), then with
one competing CPU-bound process spinning beside it (``"modes"["one_competitor"]``: a second
Python interpreter in a busy loop, as a participant's laptop runs a browser and a video call).
The torch thread count defaults to the explorer's own policy
(:func:`emerdiff_lab.threads.interactive_threads`: one core left free), so that the numbers are
what a user of ``open_explorer()`` gets; ``--threads N`` measures another count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

# The competitor: one interpreter spinning at full speed until it is stopped.
BUSY_LOOP = "while True:\n    pass"


def distinct_cells(grid: tuple[int, int], n: int) -> list[tuple[int, int]]:
    """``n`` different cells spread over the grid (a stride through it, row-major)."""
    h, w = grid
    if n > h * w:
        raise ValueError(f"asked for {n} distinct cells of a {h}x{w} grid")
    stride = max(1, (h * w) // n)
    return [divmod((i * stride + stride // 2) % (h * w), w) for i in range(n)]


@contextmanager
def competitor(enabled: bool = True):
    """Runs one CPU-bound process beside the block (none when not ``enabled``)."""
    if not enabled:
        yield None
        return
    process = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        time.sleep(1.0)     # let it reach its loop before timing starts
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between closest ranks."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(model, size: int, repeats: int, segment: bool) -> dict:
    """One run on a fresh session: new cells, their CPU time with and without the recorded
    reference pass, recording one, a cached cell and (``segment``) the whole segmentation."""
    from emerdiff_lab.assembly import upsample_bilinear
    from emerdiff_lab.modulation import perturb, record_reference
    from emerdiff_lab.widgets import default_scene, explorer_session

    load_before = os.getloadavg()
    image, labels = default_scene(size)
    start = time.perf_counter()
    session = explorer_session(model, image, labels=labels, image_size=size)
    prepare_seconds = time.perf_counter() - start

    grid = session.region_grid()
    cells = distinct_cells(grid, repeats + 1)
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
    seg = None
    if segment:
        start = time.perf_counter()
        labels = session.labels()
        seg = {"seconds": round(time.perf_counter() - start, 3), "miou": session.miou(labels),
               "naive_miou": session.miou(upsample_bilinear(session.masks(), size))}
    return {
        "image_size": session.image_size, "grid": list(grid),
        "num_masks": int(session.masks().max()) + 1,
        "modulation_timestep": session.cfg.modulation_timestep,
        "modulation_strength": session.cfg.modulation_strength,
        "attention_injection": session.cfg.attention_injection,
        "new_cell_s": [round(s, 4) for s in new_cell],
        "new_cell_median_s": round(statistics.median(new_cell), 4),
        "new_cell_p90_s": round(percentile(new_cell, 90), 4),
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
        "segment": seg, "prepare_session_s": round(prepare_seconds, 2),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def _summary(name: str, run: dict) -> str:
    seg = run["segment"]
    return (f"{name}: new single-cell perturbation median {run['new_cell_median_s']:.3f} s, "
            f"90th percentile {run['new_cell_p90_s']:.3f} s over {run['new_cell_n']} cells "
            f"(min {min(run['new_cell_s']):.3f}, max {max(run['new_cell_s']):.3f}; CPU time "
            f"median {run['new_cell_cpu_median_s']:.3f} s, without the recorded reference "
            f"pass {run['without_reference_pass_cpu_median_s']:.3f} s); cached "
            f"{run['cached_s'] * 1000:.2f} ms" + (f"; Segment {seg['seconds']:.1f} s" if seg
                                                  else "")
            + f"; load average {run['load_average_before'][0]:.1f} before")


def main(argv: list[str] | None = None) -> int:
    from emerdiff_lab.io import write_text
    from emerdiff_lab.models import load_model
    from emerdiff_lab.threads import interactive_threads
    from emerdiff_lab.widgets import DEFAULT_SCENE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toyworld")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=9,
                        help="new cells to perturb (default 9; the median is reported)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="side the model sees (default: the model's native size)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: the explorer's policy, one core "
                             "left free, or EMERDIFF_THREADS)")
    parser.add_argument("--contended", action="store_true",
                        help="measure alone and then beside one competing CPU-bound process, "
                             "both in the record")
    parser.add_argument("--no-segment", action="store_true", help="skip timing Segment")
    parser.add_argument("--json", type=Path, default=None, help="write the record here")
    args = parser.parse_args(argv)
    threads = args.threads or interactive_threads()
    torch.set_num_threads(threads)

    start = time.perf_counter()
    model = load_model(args.model, device=args.device)
    load_seconds = time.perf_counter() - start
    size = args.image_size or model.native_image_size
    modes = {"alone": False, "one_competitor": True} if args.contended else {"alone": False}
    runs = {}
    for name, busy in modes.items():
        with competitor(busy):
            runs[name] = measure(model, size, args.repeats, not args.no_segment)
        print(_summary(name, runs[name]))
    record = {
        "benchmark": "explorer", "model": args.model, "device": args.device,
        "scene_seed_index": DEFAULT_SCENE, **runs["alone"],
        "modes": runs if args.contended else None,
        "threads_setting": "--threads" if args.threads else "explorer policy "
                           "(max(1, usable cores - 1), or EMERDIFF_THREADS)",
        "load_model_s": round(load_seconds, 2),
        "cpu": _cpu_name(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"{record['cpu_cores']} cores, {record['torch_threads']} torch thread(s) "
          f"({record['threads_setting']})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.json, json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
