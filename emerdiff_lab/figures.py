"""The paper's figures: what the notebooks share, and ``emerdiff-lab figures``, which runs them all.

The notebooks in ``notebooks/`` narrate; this module holds what more than one of them needs:
:func:`setup` (model, config, image size and output folder from the papermill parameters),
:func:`labelled_examples` / :func:`photo_examples` (images to run on), :func:`ablation_table`
(the sweeps of Tables 4-9 and Figure 14) and :func:`failure_stats` (Figure 8). :func:`run_notebooks`
executes every notebook headlessly with papermill; :func:`register` adds the ``figures``
subcommand to the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"

# Notebook stem -> the figure files (in the output folder) it must write.
NOTEBOOKS: dict[str, tuple[str, ...]] = {
    "01_quickstart": ("quickstart.png",),
    "02_perturbation_effects": ("fig3_perturbation.png",),
    "03_pipeline_overview": ("fig2_pipeline.png",),
    "04_upsampling_vs_emerdiff": ("fig4_upsampling.png", "fig4_miou.png", "fig4_miou.csv"),
    "05_ablations": ("ablations.png", "ablations.csv", "fig14_layer_placement.png"),
    "06_failure_cases": ("fig8_failures.png", "fig8_failures.csv"),
    "07_gallery": ("fig1_gallery.png",),
    "08_explorer": ("explorer.png",),
}

QUICK_IMAGE_SIZE = 128
QUICK_MAX_MASKS = 8


# --------------------------------------------------------------------------- notebook context
@dataclass
class FigureContext:
    """What every notebook needs after its parameters cell; made by :func:`setup`."""

    model: object
    cfg: object
    image_size: int
    quick: bool
    out_dir: Path
    data_dir: Path | None = None
    image_paths: tuple[str, ...] = ()
    timings: dict = field(default_factory=dict)

    @property
    def tag(self) -> str:
        from .plotting import model_tag

        return model_tag(self.model)

    def save(self, fig, name: str, table=None) -> Path:
        """Writes ``fig`` (and ``table`` as CSV) to the output folder; see
        :func:`emerdiff_lab.plotting.save_figure` (random-weight figures must say so)."""
        from .plotting import save_figure

        path = save_figure(fig, self.out_dir / name, self.model, table=table)
        print(f"wrote {path}" + (f" and {path.with_suffix('.csv').name}" if table is not None
                                 else ""))
        return path


def setup(model: str = "tiny", device: str | None = None, dtype: str = "float32", *,
          image_size: int | None = None, num_masks: int | None = None, quick: bool = False,
          out_dir: str | Path = "../figures", data_dir: str | Path | None = None,
          image_paths=(), seed: int = 0) -> FigureContext:
    """Loads the model and resolves the notebook parameters into a :class:`FigureContext`.

    ``image_size`` None: the model's native size (512 for SD 1.x, 256 for the tiny model, 64 for
    toyworld), at most 128 in quick mode. ``num_masks`` None: the model's default, at most 8 in
    quick mode. ``data_dir`` None: ``../shared/data/voc14`` beside the repository when present.
    """
    from .models import load_model

    loaded = load_model(model, device=device, dtype=dtype)
    native = loaded.native_image_size
    size = int(image_size) if image_size else (min(native, QUICK_IMAGE_SIZE) if quick else native)
    masks = int(num_masks) if num_masks else loaded.default_config.num_masks
    if quick:
        masks = min(masks, QUICK_MAX_MASKS)
    cfg = loaded.default_config.replace(num_masks=masks, seed=int(seed))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(data_dir) if data_dir else find_voc14()
    print(f"model {model!r} on {loaded.device} ({loaded.dtype}); {size} px; K={masks}; "
          f"quick={quick}; labelled data: {data or 'generated toyworld scenes'}")
    if loaded.random_weights:
        print("NOTE: random weights. Every figure shows the method's mechanics, not semantics.")
    return FigureContext(model=loaded, cfg=cfg, image_size=size, quick=bool(quick), out_dir=out,
                         data_dir=data, image_paths=tuple(image_paths or ()))


def find_voc14() -> Path | None:
    """``$EMERDIFF_SHARED/data/voc14`` or ``../shared/data/voc14`` beside the repository, if
    present."""
    shared = Path(os.environ.get("EMERDIFF_SHARED", REPO_ROOT.parent / "shared"))
    voc = shared / "data" / "voc14"
    return voc if (voc / "images").is_dir() and (voc / "labels").is_dir() else None


# ------------------------------------------------------------------------------------ examples
@dataclass(frozen=True)
class Example:
    """One image the notebooks run on.

    Attributes:
        name: short name for titles and CSV rows.
        image: (3, S, S) float32 in [0, 1] (resized, centre-cropped).
        labels: (S, S) int64 ground truth (255 = ignore), or None.
        source: "voc14", "toyworld scenes", "bundled photo" or "file".
    """

    name: str
    image: torch.Tensor
    labels: torch.Tensor | None
    source: str


def labelled_examples(ctx: FigureContext, count: int) -> list[Example]:
    """``count`` images with ground truth: ../shared/data/voc14 when present, else generated
    toyworld scenes (exact labels, made in code: nothing to download)."""
    if ctx.data_dir is not None:
        return voc_examples(ctx.data_dir, ctx.image_size, count)
    return scene_examples(ctx.image_size, count)


def voc_examples(root: str | Path, size: int, count: int) -> list[Example]:
    """The first ``count`` images of a ROOT/images + ROOT/labels folder (palette PNG labels)."""
    from PIL import Image

    from .images import open_image, prepare_image

    root = Path(root)
    examples = []
    for image_path in sorted((root / "images").glob("*.jpg"))[:count]:
        label_path = root / "labels" / (image_path.stem + ".png")
        with Image.open(label_path) as label_image:
            labels = torch.from_numpy(np.asarray(label_image).astype(np.int64))
        examples.append(Example(image_path.stem, prepare_image(open_image(image_path), size).pixels,
                                resize_labels(labels, size), "voc14"))
    if not examples:
        raise FileNotFoundError(f"no *.jpg images under {root / 'images'}")
    return examples


def scene_examples(size: int, count: int, first_seed: int = 0) -> list[Example]:
    """Generated toyworld scenes (``emerdiff_lab.toyworld.scenes``) at ``size`` px, with labels."""
    from .images import prepare_image
    from .toyworld.scenes import SIZES, generate_scene

    native = min([s for s in SIZES if s >= size] or [max(SIZES)])
    examples = []
    for seed in range(first_seed, first_seed + count):
        image, labels = generate_scene(seed, native)
        examples.append(Example(f"scene{seed}", prepare_image(image, size).pixels,
                                resize_labels(torch.from_numpy(labels), size), "toyworld scenes"))
    return examples


def photo_examples(ctx: FigureContext, count: int) -> list[Example]:
    """Photos for qualitative figures: ``image_paths`` when given, else voc14 when present, else
    the photos bundled with the package (``emerdiff_lab.sample_images()``), else toyworld scenes."""
    from .images import open_image, prepare_image

    if ctx.image_paths:
        return [Example(Path(p).stem, prepare_image(open_image(Path(p)), ctx.image_size).pixels,
                        None, "file") for p in ctx.image_paths[:count]]
    if ctx.data_dir is not None:
        return voc_examples(ctx.data_dir, ctx.image_size, count)
    try:
        from .images import sample_images
        bundled = sample_images()
    except ImportError:
        bundled = {}
    if bundled:
        return [Example(name, prepare_image(open_image(path), ctx.image_size).pixels, None,
                        "bundled photo") for name, path in list(bundled.items())[:count]]
    return scene_examples(ctx.image_size, count)


def resize_labels(labels: torch.Tensor, size: int) -> torch.Tensor:
    """Ground truth (H, W) -> (size, size) the way :func:`emerdiff_lab.prepare_image` treats the
    photo (centre square, then resize), with nearest neighbour so that no class is invented."""
    height, width = labels.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = labels[top:top + side, left:left + side]
    index = (torch.arange(size) * side // size).clamp(max=side - 1)
    return square[index[:, None], index[None, :]].long()


# ---------------------------------------------------------------------------------- evaluation
def miou(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Hungarian-matched mIoU of one prediction (from ``emerdiff_lab.evaluation.metrics``)."""
    from .evaluation.metrics import hungarian_miou

    return hungarian_miou(pred, gt, ignore_index=255).miou


def segment_example(ctx: FigureContext, example: Example, cfg=None, *, inversion=None,
                    features=None) -> dict:
    """Both methods on one example at model resolution, every intermediate kept.

    Returns:
        dict with ``features`` (h, w, C), ``lowres`` (h, w), ``inversion``, ``raw_maps``
        (K, S, S), ``maps`` (blurred), ``labels`` (S, S) EmerDiff and ``naive`` (S, S) bilinear.
    """
    from .assembly import prepare_maps, upsample_bilinear
    from .features import extract_features, kmeans_masks
    from .inversion import invert
    from .modulation import pixel_change_maps

    cfg = cfg or ctx.cfg
    features = extract_features(ctx.model, example.image, cfg) if features is None else features
    lowres = kmeans_masks(features, k=cfg.num_masks, seed=cfg.seed,
                          normalization=cfg.feature_normalization)
    inversion = inversion or invert(ctx.model, example.image, cfg, progress=False)
    raw = pixel_change_maps(ctx.model, inversion, lowres, cfg, progress=False)
    maps = prepare_maps(raw, cfg.blur_sigma, cfg.normalize_maps)
    return {"features": features, "lowres": lowres, "inversion": inversion, "raw_maps": raw,
            "maps": maps, "labels": maps.argmax(dim=0).cpu(),
            "naive": upsample_bilinear(lowres.cpu(), ctx.image_size)}


def ablation_settings(ctx: FigureContext) -> list[tuple[str, str, dict]]:
    """The sweeps of Tables 4-9 and Figure 14 as (ablation, value label, config changes).

    Values follow the paper's ranges, limited to what the model's feature grid allows; quick
    mode keeps three values per sweep.
    """
    from .layers import find_semantic_block

    cfg, quick = ctx.cfg, ctx.quick
    block = find_semantic_block(ctx.model.unet)
    grid = block.feature_size(ctx.image_size, ctx.model.vae_scale_factor)
    cells = grid * grid
    layers = block.cross_attention_layers
    short = {name: f"{block.block_name} attn {i}" for i, name in enumerate(layers)}
    candidates = [] if quick else [k for k in (10, 20, 30, 40) if k <= cells // 2]
    candidates = candidates or [2, 4, 8]
    if quick:  # nothing above the configured K but the smallest candidate
        candidates = [k for k in candidates if k <= max(cfg.num_masks, candidates[0])]
    # The configured K is always in the sweep, so that the default point is marked.
    masks = sorted(set(candidates) | {cfg.num_masks})
    settings = [("number of masks (T4)", str(k), {"num_masks": k}) for k in masks]
    settings += [("feature layer (T5)", short[name], {"feature_layer": name}) for name in layers]
    t_f = (1, 261, 501) if quick else (1, 101, 261, 501, 761)
    settings += [("t_f (T6)", str(t), {"feature_timestep": t}) for t in t_f]
    t_m = (81, 281, 481) if quick else (81, 181, 281, 381, 481, 681, 881)
    settings += [("t_m (T7)", str(t), {"modulation_timestep": t}) for t in t_m]
    lam = (1.0, 10.0, 100.0) if quick else (1.0, 5.0, 10.0, 20.0, 50.0, 100.0)
    settings += [("lambda (T8)", f"{v:g}", {"modulation_strength": v}) for v in lam]
    settings += [("attention injection (T9)", v, {"attention_injection": v == "on"})
                 for v in ("on", "off")]
    for name in layers:
        for placement in ("after_projection", "before_projection"):
            settings.append(("modulated layer x offset (F14)",
                             f"attn {layers.index(name)} {placement.split('_')[0]}",
                             {"modulation_layer": name, "offset_placement": placement}))
    return settings


def ablation_table(ctx: FigureContext, examples: list[Example], settings=None,
                   progress: bool = True):
    """Runs every setting of :func:`ablation_settings` on every example; a pandas DataFrame with
    columns ablation, value, image, miou, naive_miou, num_segments, seconds, is_default.

    Work is shared: one full-trajectory inversion per image (any t_m), features per (layer, t_f),
    and identical configurations are computed once.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .features import extract_features, layer_names
    from .inversion import invert

    settings = settings if settings is not None else ablation_settings(ctx)
    base = ctx.cfg
    base_layers = layer_names(ctx.model, base, ctx.image_size)
    rows = []
    bar = tqdm(total=len(examples) * len(settings), desc="ablations", disable=not progress)
    for example in examples:
        inversion = invert(ctx.model, example.image, base, full_trajectory=True, progress=False)
        feature_cache, result_cache = {}, {}
        for ablation, value, changes in settings:
            cfg = base.replace(**changes)
            layers = layer_names(ctx.model, cfg, ctx.image_size)
            key = (cfg.replace(feature_layer=layers[0], modulation_layer=layers[1]))
            if key not in result_cache:
                fkey = (layers[0], cfg.feature_timestep)
                if fkey not in feature_cache:
                    feature_cache[fkey] = extract_features(ctx.model, example.image, cfg)
                start = time.perf_counter()
                out = segment_example(ctx, example, cfg, inversion=inversion,
                                      features=feature_cache[fkey])
                result_cache[key] = (out, time.perf_counter() - start)
            out, seconds = result_cache[key]
            is_default = key == base.replace(feature_layer=base_layers[0],
                                             modulation_layer=base_layers[1])
            rows.append({"ablation": ablation, "value": value, "image": example.name,
                         "miou": miou(out["labels"], example.labels),
                         "naive_miou": miou(out["naive"], example.labels),
                         "num_segments": int(out["labels"].unique().numel()),
                         "seconds": round(seconds, 3), "is_default": bool(is_default)})
            bar.update()
    bar.close()
    return pd.DataFrame(rows)


def failure_stats(labels: torch.Tensor, gt: torch.Tensor, *, small_min: int = 4,
                  small_fraction: float = 0.03, uniform_fraction: float = 0.15,
                  class_names=None) -> list[dict]:
    """The two failure modes of Figure 8, measured per ground-truth class of one image.

    For every class present: its pixel share, the best IoU any predicted segment reaches on it
    (``best_iou``: a small part that no segment covers scores low) and how many predicted
    segments cover at least 5% of it (``segments_inside``: a uniform region split in several
    scores high). ``kind`` says "small part" (share < ``small_fraction``, at least ``small_min``
    pixels), "large region" (share > ``uniform_fraction``) or "other". ``class_names`` (a
    sequence indexed by class id) adds a ``name`` column.
    """
    labels, gt = labels.cpu().long(), gt.cpu().long()
    if labels.shape != gt.shape:
        raise ValueError(f"labels {tuple(labels.shape)} and ground truth {tuple(gt.shape)} differ")
    valid = gt != 255
    total = int(valid.sum())
    rows = []
    for cls in gt[valid].unique().tolist():
        region = gt == cls
        size = int(region.sum())
        if size < small_min:
            continue
        inside = labels[region]
        counts = torch.bincount(inside, minlength=int(labels.max()) + 1)
        best = 0.0
        for seg in counts.nonzero().flatten().tolist():
            pred = labels == seg
            best = max(best, float((pred & region).sum()) / float((pred | region).sum()))
        share = size / total
        rows.append({"class": int(cls),
                     **({"name": class_names[cls]} if class_names is not None else {}),
                     "share": round(share, 4), "best_iou": round(best, 4),
                     "segments_inside": int((counts >= 0.05 * size).sum()),
                     "kind": "small part" if share < small_fraction else
                             "large region" if share > uniform_fraction else "other"})
    return rows


# ---------------------------------------------------------------------------------- the runner
@dataclass(frozen=True)
class NotebookRun:
    name: str
    seconds: float
    executed: Path
    error: str | None
    missing: tuple[str, ...]


def notebook_parameters(*, model: str = "tiny", device: str | None = None,
                        dtype: str = "float32", quick: bool = True, out_dir: str | Path,
                        image_size: int | None = None, num_masks: int | None = None,
                        image_paths=(), data_dir: str | Path | None = None,
                        seed: int = 0) -> dict:
    """The papermill parameters every notebook's ``parameters`` cell defines."""
    return {"model": model, "device": device, "dtype": dtype, "quick": bool(quick),
            "out_dir": str(Path(out_dir).resolve()), "image_size": image_size,
            "num_masks": num_masks, "image_paths": [str(p) for p in image_paths],
            "data_dir": str(data_dir) if data_dir else None, "seed": seed}


def run_notebooks(parameters: dict, *, notebooks_dir: str | Path = NOTEBOOKS_DIR,
                  executed_dir: str | Path | None = None, only=None,
                  kernel_name: str | None = None, timeout: int | None = None,
                  progress: bool = True) -> list[NotebookRun]:
    """Executes the notebooks with papermill; each writes its figures to ``parameters["out_dir"]``.

    Args:
        parameters: from :func:`notebook_parameters`.
        executed_dir: where the executed copies go (default ``out_dir/executed``).
        only: notebook stems (or prefixes such as "05") to run; default all, in order.
        kernel_name: Jupyter kernel (default: the Python running this function).
        timeout: seconds allowed per cell.

    A failing notebook does not stop the others; its error is in the returned run. Without
    ``kernel_name`` the notebooks run in this very Python (a temporary kernelspec), never in
    whatever a user-level "python3" kernelspec points to.
    """
    if kernel_name is None:
        with _current_python_kernel() as name:
            return run_notebooks(parameters, notebooks_dir=notebooks_dir,
                                 executed_dir=executed_dir, only=only, kernel_name=name,
                                 timeout=timeout, progress=progress)
    import papermill

    notebooks_dir = Path(notebooks_dir)
    out_dir = Path(parameters["out_dir"])
    executed_dir = Path(executed_dir) if executed_dir else out_dir / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    names = select_notebooks(only)
    runs = []
    for name in names:
        source = notebooks_dir / f"{name}.ipynb"
        target = executed_dir / f"{name}.ipynb"
        if progress:
            print(f"[figures] {name} ...", flush=True)
        start = time.perf_counter()
        error = None
        try:
            papermill.execute_notebook(
                str(source), str(target), parameters=parameters, cwd=str(notebooks_dir),
                kernel_name=kernel_name, progress_bar=False, log_output=False,
                execution_timeout=timeout)
        except Exception as failure:  # noqa: BLE001 - papermill and nbclient raise many types
            error = f"{type(failure).__name__}: {failure}"
        seconds = time.perf_counter() - start
        missing = tuple(f for f in NOTEBOOKS[name] if not (out_dir / f).is_file())
        runs.append(NotebookRun(name, seconds, target, error, missing))
        if progress:
            state = "FAILED" if error else ("missing " + ", ".join(missing) if missing else "ok")
            print(f"[figures] {name}: {state} in {seconds:.1f} s", flush=True)
    _write_timings(executed_dir / "timings.csv", runs)
    return runs


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
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------- the subcommand
def register(subparsers) -> None:
    """Adds ``emerdiff-lab figures`` to the command line."""
    from .cli import add_model_options

    parser = subparsers.add_parser(
        "figures", help="run every notebook headlessly with papermill; figures to OUT",
        description="Execute the notebooks in notebooks/ with papermill. Each writes its figures "
                    "(PNG, plus CSV for plotted numbers) to OUT and its executed copy to "
                    "OUT/executed. Default: the offline tiny model (random weights, every figure "
                    "says so) in quick mode. With --model CompVis/stable-diffusion-v1-4 "
                    "--device cuda the same command makes the real figures (full mode).")
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
    parser.add_argument("--image-size", type=int, default=None,
                        help="side the model sees (default: the model's, 128 in quick mode)")
    parser.add_argument("--num-masks", type=int, default=None,
                        help="K (default: the model's, at most 8 in quick mode)")
    parser.add_argument("--images", nargs="*", default=(), metavar="IMAGE",
                        help="photos for the qualitative figures (default: voc14 when present, "
                             "else the bundled photos)")
    parser.add_argument("--data", type=Path, default=None,
                        help="labelled images ROOT/images + ROOT/labels (default: "
                             "../shared/data/voc14 when present, else generated scenes)")
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
    add_model_options(parser)
    parser.set_defaults(handler=_run_figures)


def _run_figures(args: argparse.Namespace) -> int:
    import sys

    from .models import resolve_device

    device = args.device
    quick = args.quick
    if quick is None:
        quick = args.model == "tiny" or resolve_device(device).type == "cpu"
    if not args.notebooks.is_dir():
        raise FileNotFoundError(f"notebooks folder not found: {args.notebooks}")
    parameters = notebook_parameters(
        model=args.model, device=device, dtype=args.dtype, quick=quick, out_dir=args.out,
        image_size=args.image_size, num_masks=args.num_masks, image_paths=args.images,
        data_dir=args.data, seed=args.seed)
    print(f"[figures] model={args.model} device={device or 'auto'} quick={quick} "
          f"-> {args.out}", flush=True)
    start = time.perf_counter()
    runs = run_notebooks(parameters, notebooks_dir=args.notebooks, executed_dir=args.executed,
                         only=args.only, kernel_name=args.kernel, timeout=args.cell_timeout)
    failed = [r for r in runs if r.error or r.missing]
    print(f"[figures] {len(runs) - len(failed)}/{len(runs)} notebooks ok in "
          f"{time.perf_counter() - start:.0f} s; executed copies in "
          f"{args.executed or args.out / 'executed'}", flush=True)
    for run in failed:
        reason = run.error or f"did not write {', '.join(run.missing)}"
        print(f"emerdiff-lab figures: {run.name} failed: {reason.splitlines()[0][:500]} "
              f"(see {run.executed})", file=sys.stderr)
    return 1 if failed else 0
