"""``make demo`` (``python -m emerdiff_lab.demo``): segment the bundled ToyWorld scenes, write
what ``emerdiff-lab segment`` writes, one summary figure, and print each scene's mIoU and
boundary F-score.

    python -m emerdiff_lab.demo                          # ToyWorld, bundled scenes -> figures/demo
    python -m emerdiff_lab.demo photo.jpg --model tiny   # any images, any model (no scores)

Per image the output folder gets ``NAME_labels.png``, ``NAME_overlay.png``, ``NAME.npz`` and
``NAME.json`` (the ``segment`` subcommand writes them; this module runs it), and once
``summary.png``: one row per image, scene | k-means masks | naive upsampling | EmerDiff | ground
truth, each panel at least 256 px (nearest-neighbour upsampling, so that pixels stay pixels).
An image ``DIR/NAME.png`` with a label map ``DIR/labels/NAME.png`` (class ids, as the bundled
scenes have) is scored: per-image Hungarian mIoU of naive upsampling and of EmerDiff, and under
the same matching their boundary F-score (theta 2 px at 128 px, scaled with the image:
:func:`emerdiff_lab.evaluation.metrics.boundary_f_score`), which sees the edges mIoU barely does.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .io import unique_output_stems

ASSETS = Path(__file__).resolve().parent / "assets" / "toyworld"
PANEL_PX = 256
COLUMNS = ("scene", "k-means masks (16x16)", "naive upsampling", "EmerDiff", "ground truth")


@dataclass(frozen=True)
class DemoRow:
    """One segmented image, everything at the model's resolution S.

    Attributes:
        name: the image's file stem.
        image: (3, S, S) float in [0, 1], what the model saw.
        lowres: (h, w) int64 k-means masks; naive, emerdiff: (S, S) int64 mask ids.
        truth: (S, S) int64 class ids (255 = ignore), or None for an unlabelled image.
        naive_miou, emerdiff_miou: per-image Hungarian mIoU in [0, 1], or None without labels.
        naive_bf, emerdiff_bf: per-image boundary F-score (``bf2``) in [0, 1] under the same
            matching, or None without labels.
    """

    name: str
    image: torch.Tensor
    lowres: torch.Tensor
    naive: torch.Tensor
    emerdiff: torch.Tensor
    truth: torch.Tensor | None
    naive_miou: float | None
    emerdiff_miou: float | None
    naive_bf: float | None = None
    emerdiff_bf: float | None = None


def bundled_scenes() -> list[Path]:
    """The four held-out ToyWorld scenes shipped with the package (labels in ``labels/``)."""
    scenes = sorted(ASSETS.glob("*.png"))
    if not scenes:
        raise FileNotFoundError(f"no bundled scenes in {ASSETS}; run scripts/make_demo_scenes.py")
    return scenes


def labels_for(image_path: Path) -> Path | None:
    """``DIR/labels/NAME.png`` beside ``DIR/NAME.ext`` when it exists (the bundled layout)."""
    candidate = image_path.parent / "labels" / f"{image_path.stem}.png"
    return candidate if candidate.is_file() else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m emerdiff_lab.demo",
        description="Segment images (default: the bundled ToyWorld scenes) with EmerDiff; write "
                    "the per-image outputs of `emerdiff-lab segment`, a summary figure, and "
                    "print naive vs EmerDiff mIoU for images that have labels.")
    parser.add_argument("images", nargs="*", type=Path,
                        help="images to segment (default: the bundled ToyWorld scenes)")
    parser.add_argument("--out", type=Path, default=Path("figures/demo"),
                        help="output folder (default: figures/demo)")
    parser.add_argument("--model", default="toyworld",
                        help="toyworld (default), tiny, a hub id or a diffusers folder")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--image-size", type=int, default=None,
                        help="side the model sees (default: the model's native size)")
    parser.add_argument("--num-masks", type=int, default=None,
                        help="K (default: the model's; 6 for toyworld)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .cli import main as cli_main

    args = build_parser().parse_args(argv)
    # each file once, and under the name `segment` gave it (inputs with one name are renamed)
    images = list(dict.fromkeys(Path(p) for p in args.images)) or bundled_scenes()
    code = cli_main(segment_argv(images, args))
    if code != 0:
        return code
    stems, _ = unique_output_stems(images)
    rows = [load_row(path, args.out, stem) for path, stem in zip(images, stems)]
    figure = write_summary(rows, args.out / "summary.png", class_names=_class_names(images))
    print(score_table(rows))
    print(f"\nper image: NAME_labels.png, NAME_overlay.png, NAME.npz + NAME.json in {args.out}/")
    print(f"summary figure: {figure}")
    return 0


def segment_argv(images: list[Path], args: argparse.Namespace) -> list[str]:
    """The ``emerdiff-lab segment`` command line that writes the per-image outputs."""
    argv = ["segment", *map(str, images), "--out", str(args.out), "--model", args.model,
            "--dtype", args.dtype]
    for flag, value in (("--device", args.device), ("--image-size", args.image_size),
                        ("--num-masks", args.num_masks)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--quiet"] if args.quiet else [])


def load_row(image_path: Path, out: Path, stem: str | None = None) -> DemoRow:
    """Reads back what ``segment`` wrote for ``image_path`` (as ``out/stem``, by default the
    file's stem) and scores it against its labels."""
    from PIL import Image

    from .assembly import upsample_bilinear
    from .evaluation.datasets import label_to_model
    from .evaluation.metrics import segmentation_scores
    from .images import load_image, open_image
    from .segmentation import Segmentation

    seg = Segmentation.load(out / (stem or image_path.stem))
    size = seg.image_size
    image = load_image(open_image(image_path), size)
    naive = upsample_bilinear(seg.lowres_labels, size)
    truth = None
    label_path = labels_for(image_path)
    if label_path is not None:
        with Image.open(label_path) as labels:
            truth = torch.from_numpy(label_to_model(np.asarray(labels).astype(np.int64), size))
    scores = {} if truth is None else {name: segmentation_scores(pred, truth) for name, pred
                                       in (("naive", naive), ("emerdiff", seg.model_labels))}
    return DemoRow(
        name=stem or image_path.stem, image=image, lowres=seg.lowres_labels, naive=naive,
        emerdiff=seg.model_labels, truth=truth,
        **{f"{name}_{short}": scores[name][key] if scores else None
           for name in ("naive", "emerdiff") for short, key in (("miou", "miou"), ("bf", "bf2"))})


def score_table(rows: list[DemoRow]) -> str:
    """Per-image mIoU and boundary F-score of naive upsampling and EmerDiff, and their means
    (with n), as aligned text."""
    lines = [f"{'image':<16}{'naive mIoU':>12}{'EmerDiff mIoU':>15}{'gain':>9}"
             f"{'naive BF':>10}{'EmerDiff BF':>13}{'gain':>9}"]

    def cells(naive_miou, emerdiff_miou, naive_bf, emerdiff_bf):
        return (f"{naive_miou:>12.3f}{emerdiff_miou:>15.3f}{emerdiff_miou - naive_miou:>+9.3f}"
                f"{naive_bf:>10.3f}{emerdiff_bf:>13.3f}{emerdiff_bf - naive_bf:>+9.3f}")

    fields = ("naive_miou", "emerdiff_miou", "naive_bf", "emerdiff_bf")
    scored = [r for r in rows if r.truth is not None]
    for row in rows:
        if row.truth is None:
            lines.append(f"{row.name:<16}{'(no labels)':>12}")
        else:
            lines.append(f"{row.name:<16}" + cells(*(getattr(row, f) for f in fields)))
    if scored:
        means = (float(np.mean([getattr(r, f) for r in scored])) for f in fields)
        lines.append(f"{f'mean (n = {len(scored)})':<16}" + cells(*means))
    lines.append("(per-image Hungarian mIoU: each mask matched to at most one class; BF: boundary"
                 " F-score under the same matching, 2 px at 128 px)")
    return "\n".join(lines)


def write_summary(rows: list[DemoRow], path: Path, class_names=None) -> Path:
    """The summary figure: one row per image, panels of at least ``PANEL_PX`` pixels.

    With labels, the three predictions are coloured by the class each mask was matched to
    (black: matched to none), so they read directly against the ground truth. ``class_names``
    (indexed by class id) adds a legend of the classes present.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plotting import save_figure, suptitle

    provenance = _provenance(rows[0].name, path.parent)
    dpi = 100
    cell = PANEL_PX / dpi + 0.25            # inches per panel: 256 px plus room for titles
    fig, axes = plt.subplots(len(rows), len(COLUMNS), dpi=dpi, squeeze=False,
                             figsize=(cell * len(COLUMNS), (cell + 0.35) * len(rows) + 0.9))
    for ax_row, row in zip(axes, rows):
        for ax, (title, panel) in zip(ax_row, _panels(row)):
            ax.imshow(_upsampled(panel), interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    suptitle(fig, "EmerDiff demo: masks, naive upsampling, EmerDiff, ground truth", provenance)
    fig.tight_layout(rect=(0, 0.03 if class_names else 0, 1, 1))
    if class_names:
        _legend(fig, rows, class_names)
    path = save_figure(fig, path, provenance, dpi=dpi)
    plt.close(fig)
    return path


def _panels(row: DemoRow) -> list[tuple[str, np.ndarray]]:
    from .plotting import label_colours, matched_mapping, to_numpy_image

    scene = (to_numpy_image(row.image) * 255).round().astype(np.uint8)
    if row.truth is None:
        mapping = None
        truth = np.full_like(scene, 255)
        truth_title = "ground truth: none"
    else:
        # One matching (EmerDiff's) colours all three predictions: same mask, same colour.
        mapping = matched_mapping(row.emerdiff, row.truth)
        truth = label_colours(row.truth)
        truth_title = "ground truth"

    def scored(name, value):
        return name if value is None else f"{name}, mIoU {value:.3f}"

    return [(row.name, scene),
            ("k-means masks (16x16)" if row.lowres.shape[0] == 16
             else f"k-means masks {tuple(row.lowres.shape)}", label_colours(row.lowres, mapping)),
            (scored("naive upsampling", row.naive_miou), label_colours(row.naive, mapping)),
            (scored("EmerDiff", row.emerdiff_miou), label_colours(row.emerdiff, mapping)),
            (truth_title, truth)]


def _legend(fig, rows: list[DemoRow], class_names) -> None:
    from matplotlib.patches import Patch

    from .plotting import UNMATCHED_COLOUR, label_colours

    present = sorted({int(c) for r in rows if r.truth is not None
                      for c in r.truth.unique().tolist() if c != 255})
    colours = label_colours(np.array([present]))[0] / 255
    handles = [Patch(color=colour, label=class_names[c]) for c, colour in zip(present, colours)]
    handles.append(Patch(color=np.array(UNMATCHED_COLOUR) / 255, label="mask matched to no class"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)


def _class_names(images: list[Path]):
    """ToyWorld's class names when every image is a bundled scene (their labels are its
    classes), else None."""
    if all(path.resolve().parent == ASSETS for path in images):
        from .toyworld import CLASS_NAMES

        return CLASS_NAMES
    return None


def _upsampled(panel: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> at least PANEL_PX on a side, by repeating pixels (nearest neighbour)."""
    factor = max(1, -(-PANEL_PX // min(panel.shape[:2])))
    return np.repeat(np.repeat(panel, factor, axis=0), factor, axis=1)


def _provenance(stem: str, out: Path) -> dict:
    import json

    return json.loads((out / f"{stem}.json").read_text())["provenance"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
