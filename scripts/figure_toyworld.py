#!/usr/bin/env python
"""Figures of the ToyWorld model card: generated samples beside training scenes, and EmerDiff on
held-out scenes (scene, ground truth, k-means masks, naive upsampling, EmerDiff).

    OMP_NUM_THREADS=1 python scripts/figure_toyworld.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from emerdiff_lab.io import atomic_file
from emerdiff_lab.toyworld import generate_batch, load_toyworld, sample
from emerdiff_lab.toyworld.model import WEIGHTS_PATH

ROOT = Path(__file__).resolve().parents[1]


def samples_figure(model, path: Path, n: int, seed: int) -> None:
    """Top rows: n training-distribution scenes; bottom rows: n samples of the model."""
    train, _ = generate_batch(range(n))                       # training seeds start at 0
    generated = (sample(model, n, seed=seed).permute(0, 2, 3, 1).numpy() * 255).round()
    cols = min(n, 8)
    rows = 2 * ((n + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows))
    for k, (images, title) in enumerate(((train, "training scene"),
                                         (generated.astype(np.uint8), "generated"))):
        for i in range(n):
            ax = axes[k * rows // 2 + i // cols, i % cols]
            ax.imshow(images[i], interpolation="nearest")
            ax.set_title(title, fontsize=6)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("ToyWorld: training scenes (top) and samples of the trained model (bottom, "
                 "50-step DDPM)", fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png", dpi=150)
    plt.close(fig)


def segmentation_figure(model, control, path: Path, n: int) -> None:
    """One row per held-out scene: image, ground truth, then masks / naive / EmerDiff for the
    trained model and for the random-weight control."""
    import emerdiff_lab as edl
    from emerdiff_lab.toyworld.evaluation import heldout_scenes, nearest_upsample

    pixels, labels = heldout_scenes(n)
    columns = ["scene", "ground truth"]
    for name in ("trained", "random"):
        columns += [f"{name}: k-means masks", f"{name}: naive", f"{name}: EmerDiff"]
    fig, axes = plt.subplots(n, len(columns), figsize=(1.3 * len(columns), 1.4 * n))
    axes = np.atleast_2d(axes)
    for i in range(n):
        panels = [pixels[i].permute(1, 2, 0).numpy(), labels[i].numpy()]
        for m in (model, control):
            seg = edl.segment(m, pixels[i], image_size=64, progress=False)
            panels += [nearest_upsample(seg.lowres_labels, 64).numpy(),
                       edl.upsample_bilinear(seg.lowres_labels, 64).numpy(),
                       seg.model_labels.numpy()]
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(panel, interpolation="nearest", cmap=None if j == 0 else "tab10")
            ax.axis("off")
            if i == 0:
                ax.set_title(columns[j], fontsize=5)
    fig.tight_layout()
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png", dpi=150)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=WEIGHTS_PATH)
    p.add_argument("--n", type=int, default=8, help="samples (and training scenes) shown")
    p.add_argument("--segmentations", type=int, default=4, help="held-out scenes segmented")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--out", type=Path, default=ROOT / "figures")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_toyworld(weights=args.weights)
    samples_figure(model, args.out / "toyworld_samples.png", args.n, args.seed)
    if args.segmentations:
        control = load_toyworld(weights=args.weights, random_weights=True)
        segmentation_figure(model, control, args.out / "toyworld_segmentation.png",
                            args.segmentations)
    print(f"wrote figures to {args.out}")


if __name__ == "__main__":
    main()
