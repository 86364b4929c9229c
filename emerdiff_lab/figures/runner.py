"""``emerdiff-lab figures``: every notebook executed headlessly with papermill, timed.

:func:`run_notebooks` executes the notebooks and writes ``timings.csv``; :func:`register` adds
the ``figures`` subcommand to the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..io import write_text
from .context import QUICK_IMAGE_SIZE, QUICK_MAX_MASKS, REPO_ROOT, SMOKE_IMAGES, SMOKE_MAX_MASKS

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"

# Notebook stem -> the figure files (in the output folder) it must write.
NOTEBOOKS: dict[str, tuple[str, ...]] = {
    "01_quickstart": ("quickstart.png",),
    "02_perturbation_effects": ("fig3_perturbation.png",),
    "03_pipeline_overview": ("fig2_pipeline.png",),
    "04_upsampling_vs_emerdiff": ("fig4_upsampling.png", "fig4_miou.png", "fig4_miou.csv"),
    "05_ablations": ("ablations.png", "ablations.csv"),
    "06_failure_cases": ("fig8_failures.png", "fig8_failures.csv", "fig8_per_class.png",
                         "fig8_per_class.csv"),
    "07_gallery": ("fig1_gallery.png",),
    "08_explorer": ("explorer.png",),
    "09_layers_and_choices": ("ablations_layers_choices.png", "ablations_layers_choices.csv",
                              "fig14_layer_placement.png"),
    "10_word_maps": ("word_maps.png", "open_vocabulary.png", "open_vocabulary.csv"),
}


# ---------------------------------------------------------------------------------- the runner
@dataclass(frozen=True)
class NotebookRun:
    name: str
    seconds: float
    executed: Path
    error: str | None
    missing: tuple[str, ...]


def notebook_parameters(*, model: str = "toyworld", device: str | None = None,
                        dtype: str = "float32", quick: bool = True, smoke: bool = False,
                        out_dir: str | Path, image_size: int | None = None,
                        num_masks: int | None = None, image_paths=(),
                        data_dir: str | Path | None = None, seed: int = 0) -> dict:
    """The papermill parameters every notebook's ``parameters`` cell defines."""
    return {"model": model, "device": device, "dtype": dtype, "quick": bool(quick),
            "smoke": bool(smoke),
            "out_dir": str(Path(out_dir).resolve()), "image_size": image_size,
            "num_masks": num_masks, "image_paths": [str(p) for p in image_paths],
            "data_dir": str(data_dir) if data_dir else None, "seed": seed}


# With several jobs, the order in which notebooks are handed to the free workers, longest first:
# 04 (24 scenes with the random control) and 05 (the paper's sweeps on 12 scenes) start side by
# side; 09 (Figure 14 and our choices on the same 12 scenes) takes the first worker to finish,
# normally 05's, whose default-setting maps it reads; then the rest, which mostly read the maps
# 04 has cached. Measured timings: docs/notebooks.md.
PARALLEL_ORDER = ("04", "05", "09", "10", "02", "06", "07", "01", "03", "08")


def run_notebooks(parameters: dict, *, notebooks_dir: str | Path = NOTEBOOKS_DIR,
                  executed_dir: str | Path | None = None, only=None,
                  kernel_name: str | None = None, timeout: int | None = None,
                  progress: bool = True, jobs: int = 1) -> list[NotebookRun]:
    """Executes the notebooks with papermill; each writes its figures to ``parameters["out_dir"]``.

    Args:
        parameters: from :func:`notebook_parameters`.
        executed_dir: where the executed copies go (default ``out_dir/executed``).
        only: notebook stems (or prefixes such as "05") to run; default all, in order.
        kernel_name: Jupyter kernel (default: the Python running this function).
        timeout: seconds allowed per cell.
        jobs: notebooks executed at the same time, each in its own process and kernel (in
            :data:`PARALLEL_ORDER`); 1 runs them one after the other, in order.

    A failing notebook does not stop the others; its error is in the returned run. Without
    ``kernel_name`` the notebooks run in this very Python (a temporary kernelspec), never in
    whatever a user-level "python3" kernelspec points to.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    if kernel_name is None:
        with _current_python_kernel() as name:
            return run_notebooks(parameters, notebooks_dir=notebooks_dir,
                                 executed_dir=executed_dir, only=only, kernel_name=name,
                                 timeout=timeout, progress=progress, jobs=jobs)
    notebooks_dir = Path(notebooks_dir)
    out_dir = Path(parameters["out_dir"])
    executed_dir = Path(executed_dir) if executed_dir else out_dir / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    names = select_notebooks(only)
    tasks = [(name, str(notebooks_dir / f"{name}.ipynb"), str(executed_dir / f"{name}.ipynb"),
              parameters, str(notebooks_dir), kernel_name, timeout) for name in names]
    results = {}

    def finished(name, error, seconds):
        missing = tuple(f for f in NOTEBOOKS[name] if not (out_dir / f).is_file())
        results[name] = NotebookRun(name, seconds, executed_dir / f"{name}.ipynb", error,
                                    missing)
        if progress:
            state = "FAILED" if error else ("missing " + ", ".join(missing) if missing else "ok")
            print(f"[figures] {name}: {state} in {seconds:.1f} s", flush=True)

    if jobs == 1:
        for task in tasks:
            if progress:
                print(f"[figures] {task[0]} ...", flush=True)
            finished(*_execute(*task))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        rank = {stem: i for i, stem in enumerate(PARALLEL_ORDER)}
        tasks.sort(key=lambda t: rank.get(t[0][:2], len(rank)))
        if progress:
            print(f"[figures] {len(tasks)} notebooks, {jobs} at a time: "
                  f"{', '.join(t[0] for t in tasks)}", flush=True)
        # spawn: each worker starts clean (no copy of this process's threads or torch state)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            for future in as_completed([pool.submit(_execute, *task) for task in tasks]):
                finished(*future.result())
    runs = [results[name] for name in names]
    _write_timings(executed_dir / "timings.csv", runs)
    return runs


def _execute(name, source, target, parameters, cwd, kernel_name, timeout):
    """Runs one notebook with papermill: ``(name, error or None, seconds)``."""
    import papermill

    start = time.perf_counter()
    error = None
    try:
        papermill.execute_notebook(source, target, parameters=parameters, cwd=cwd,
                                   kernel_name=kernel_name, progress_bar=False,
                                   log_output=False, execution_timeout=timeout)
    except Exception as failure:  # noqa: BLE001 - papermill and nbclient raise many types
        error = f"{type(failure).__name__}: {failure}"
    return name, error, time.perf_counter() - start


@contextlib.contextmanager
def _current_python_kernel():
    """A kernelspec for ``sys.executable`` in a temporary folder put first on JUPYTER_PATH."""
    import json
    import sys
    import tempfile

    name = "emerdiff-lab-figures"
    with tempfile.TemporaryDirectory(prefix="emerdiff-kernel-") as folder:
        spec = Path(folder) / "kernels" / name
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "emerdiff-lab (figures)", "language": "python"}))
        previous = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (folder, previous) if p)
        try:
            yield name
        finally:
            if previous is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = previous


def select_notebooks(only=None) -> list[str]:
    if not only:
        return list(NOTEBOOKS)
    chosen = [n for n in NOTEBOOKS if any(n == o or n.startswith(o) for o in only)]
    if not chosen:
        raise ValueError(f"no notebook matches {list(only)}; notebooks are {list(NOTEBOOKS)}")
    return chosen


def _write_timings(path: Path, runs: list[NotebookRun]) -> None:
    lines = ["notebook,seconds,status"]
    lines += [f"{r.name},{r.seconds:.1f},{'error' if r.error else 'ok'}" for r in runs]
    write_text(path, "\n".join(lines) + "\n")


# ------------------------------------------------------------------------------- the subcommand
def register(subparsers) -> None:
    """Adds ``emerdiff-lab figures`` to the command line."""
    from ..cli import add_model_options

    parser = subparsers.add_parser(
        "figures", help="run every notebook headlessly with papermill; figures to OUT",
        description="Execute the notebooks in notebooks/ with papermill. Each writes its figures "
                    "(PNG, plus CSV for plotted numbers) to OUT and its executed copy to "
                    "OUT/executed. Default: the offline ToyWorld model (trained here on "
                    "synthetic scenes) on its held-out test scenes, quick mode on a CPU. "
                    "--model tiny: random weights, mechanics only (every figure says so). With "
                    "--model CompVis/stable-diffusion-v1-4 --device cuda the same command makes "
                    "the paper's figures (full mode).")
    parser.add_argument("--out", type=Path, default=Path("figures"),
                        help="folder for the figures (default: figures)")
    parser.add_argument("--executed", type=Path, default=None,
                        help="folder for the executed notebooks (default: OUT/executed)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="quick", action="store_true", default=None,
                      help=f"CI mode: at most {QUICK_IMAGE_SIZE} px and {QUICK_MAX_MASKS} masks, "
                           f"short sweeps (default for the tiny model and on a CPU)")
    mode.add_argument("--full", dest="quick", action="store_false",
                      help="the model's native size and masks, full sweeps (default on a GPU "
                           "with real weights)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"CI mode: {SMOKE_IMAGES} images per figure, few masks, a coarse "
                             f"schedule; checks that every notebook runs, its numbers mean "
                             f"nothing")
    parser.add_argument("--image-size", type=int, default=None,
                        help="side the model sees (default: the model's, 128 in quick mode)")
    parser.add_argument("--num-masks", type=int, default=None,
                        help="K (default: the model's, at most 8 in quick mode)")
    parser.add_argument("--images", nargs="*", default=(), metavar="IMAGE",
                        help="photos for the qualitative figures (default: voc14 when present, "
                             "else the bundled photos; flagged in every title on ToyWorld)")
    parser.add_argument("--data", type=Path, default=None,
                        help="labelled images ROOT/images + ROOT/labels for models other than "
                             "ToyWorld (default: ../shared/data/voc14 when present, else "
                             "ToyWorld's test scenes)")
    parser.add_argument("--only", nargs="*", default=None, metavar="NOTEBOOK",
                        help="run only these notebooks (names or prefixes such as 05)")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS_DIR,
                        help="folder of the notebooks (default: the repository's notebooks/)")
    parser.add_argument("--kernel", default=None,
                        help="Jupyter kernel name (default: this Python, whatever kernelspecs "
                             "are installed)")
    parser.add_argument("--cell-timeout", type=int, default=None,
                        help="seconds allowed per cell (default: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="notebooks executed at the same time, each in its own kernel "
                             "(default: 1; 2 on 2 cores with one torch thread each)")
    add_model_options(parser, default_model="toyworld")
    parser.set_defaults(handler=_run_figures)


def _run_figures(args: argparse.Namespace) -> int:
    import sys

    from ..models import resolve_device

    device = args.device
    quick = args.quick
    if quick is None:
        quick = args.smoke or args.model == "tiny" or resolve_device(device).type == "cpu"
    if not args.notebooks.is_dir():
        raise FileNotFoundError(f"notebooks folder not found: {args.notebooks}")
    num_masks = args.num_masks
    if args.smoke and num_masks is None:  # also for notebooks whose setup ignores `smoke`
        num_masks = SMOKE_MAX_MASKS
    parameters = notebook_parameters(
        model=args.model, device=device, dtype=args.dtype, quick=quick, smoke=args.smoke,
        out_dir=args.out,
        image_size=args.image_size, num_masks=num_masks, image_paths=args.images,
        data_dir=args.data, seed=args.seed)
    print(f"[figures] model={args.model} device={device or 'auto'} quick={quick} "
          f"smoke={args.smoke} "
          f"-> {args.out}", flush=True)
    start = time.perf_counter()
    runs = run_notebooks(parameters, notebooks_dir=args.notebooks, executed_dir=args.executed,
                         only=args.only, kernel_name=args.kernel, timeout=args.cell_timeout,
                         jobs=args.jobs)
    failed = [r for r in runs if r.error or r.missing]
    print(f"[figures] {len(runs) - len(failed)}/{len(runs)} notebooks ok in "
          f"{time.perf_counter() - start:.0f} s; executed copies in "
          f"{args.executed or args.out / 'executed'}", flush=True)
    for run in failed:
        reason = run.error or f"did not write {', '.join(run.missing)}"
        print(f"emerdiff-lab figures: {run.name} failed: {reason.splitlines()[0][:500]} "
              f"(see {run.executed})", file=sys.stderr)
    return 1 if failed else 0
