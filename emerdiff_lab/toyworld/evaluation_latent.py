"""Held-out evaluation of EmerDiff on ToyWorld-latent's scenes (128 px), with baselines that need
no diffusion model.

For every scene, each scored by per-image Hungarian mIoU against the exact class map and, under
the same matching, by the boundary F-score (``name_bf1``, ``name_bf2``, ``name_bf2_agnostic``:
:func:`~emerdiff_lab.toyworld.evaluation.method_scores`):

- ``masks``: k-means (K masks) of the 16x16 UNet features, nearest-upsampled (each 8 px cell one
  label): how semantic the masks themselves are;
- ``naive``: the same masks upsampled bilinearly (the paper's baseline);
- ``emerdiff``: EmerDiff's labels (raw difference maps; ``emerdiff_norm``: each map / its max);
- ``pixel_kmeans``: k-means (K) of the pixels' RGB colours, no model at all;
- ``cell_colour_kmeans``: k-means (K) of each 16x16 cell's mean colour, nearest-upsampled (the
  colour-only counterpart of ``masks``);
- ``latent_kmeans``: k-means (K) of the VAE's 32x32 latents (posterior means), nearest-upsampled.

Paired differences between methods are over the same scenes (see :func:`paired`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..baselines import pixel_colour_kmeans
from ..config import EmerDiffConfig
from ..features import kmeans_masks
from .evaluation import METHODS as SCENE_METHODS
from .evaluation import (
    VALIDATION_SEED_START,
    evaluate_scene,
    method_scores,
    nearest_upsample,
    score_keys,
    summarize,
)
from .latent_model import IMAGE_SIZE
from .scenes256 import HELDOUT_SEED_START, generate_batch

UNET_METHODS = SCENE_METHODS  # k-means masks, naive, EmerDiff (plain and normalised maps)
BASELINES = ("pixel_kmeans", "cell_colour_kmeans", "latent_kmeans")
METHODS = UNET_METHODS + BASELINES
TEST_SEED_START = HELDOUT_SEED_START
__all__ = ["BASELINES", "METHODS", "TEST_SEED_START", "UNET_METHODS", "VALIDATION_SEED_START",
           "baseline_scores", "evaluate", "paired", "pixel_colour_kmeans", "scenes",
           "unet_scores"]


def scenes(n: int, *, start: int = TEST_SEED_START, size: int = IMAGE_SIZE):
    """``n`` held-out scenes from seed ``start``: (n, 3, size, size) float32 in [0, 1] (with the
    generator's sensor noise, as a user would pass them) and (n, size, size) int64 labels."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer (number of scenes), got {n!r}")
    images, labels = generate_batch(range(start, start + n), size)
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255,
            torch.from_numpy(labels))


def baseline_scores(model, pixels: torch.Tensor, labels: torch.Tensor,
                    cfg: EmerDiffConfig) -> dict[str, float]:
    """Scores (:func:`~emerdiff_lab.toyworld.evaluation.method_scores`: mIoU under the method's
    name, boundary F-scores beside it) of the three model-free (or VAE-only) baselines for one
    scene.

    Args:
        model: an EmerDiffModel with a VAE (its UNet is not used).
        pixels: (3, S, S) float32 in [0, 1]; labels: (S, S) int64.
        cfg: ``num_masks`` (K) and ``seed`` are used.
    """
    size, k = pixels.shape[-1], cfg.num_masks
    cell = size // 16
    cells = F.avg_pool2d(pixels[None], cell)[0].permute(1, 2, 0)          # (16, 16, 3)
    latent = model.encode(pixels[None])[0].permute(1, 2, 0).cpu()           # (32, 32, 4)
    predictions = {
        "pixel_kmeans": pixel_colour_kmeans(pixels, k, cfg.seed),
        "cell_colour_kmeans": nearest_upsample(
            kmeans_masks(cells, k=k, seed=cfg.seed, normalization="none"), size),
        "latent_kmeans": nearest_upsample(
            kmeans_masks(latent, k=k, seed=cfg.seed, normalization="none"), size),
    }
    scores = {}
    for name, pred in predictions.items():
        scores |= method_scores(name, pred, labels)
    return scores


def unet_scores(model, pixels: torch.Tensor, labels: torch.Tensor,
                cfg: EmerDiffConfig) -> dict[str, float]:
    """Scores (mIoU and boundary F-scores) of ``UNET_METHODS`` for one scene (pixels (3, S, S) in
    [0, 1], labels (S, S)): the 64 px model's per-scene evaluation, which scores the same
    methods."""
    return evaluate_scene(model, pixels, labels, cfg)


def evaluate(model, n: int, cfg: EmerDiffConfig | None = None, *, start: int = TEST_SEED_START,
             baselines: bool = True, progress: bool = True) -> dict:
    """Evaluates ``model`` on ``n`` held-out scenes (IMAGE_SIZE px) from seed ``start``.

    Returns:
        dict with ``per_image`` ({key: [n floats]}: each method's mIoU under its name, its
        boundary F-scores under ``name_bf1``, ``name_bf2``, ``name_bf2_agnostic``), ``mean``,
        ``sem`` (standard error over scenes), ``seconds_per_scene``, ``n``, ``start`` and
        ``config``; baselines included when ``baselines``.
    """
    import time

    cfg = cfg or model.default_config
    pixels, labels = scenes(n, start=start)
    per_image = {key: [] for key in score_keys(METHODS if baselines else UNET_METHODS)}
    tick = time.time()
    for i in tqdm(range(n), desc=f"eval {model.model_id}", disable=not progress):
        scores = unet_scores(model, pixels[i], labels[i], cfg)
        if baselines:
            scores |= baseline_scores(model, pixels[i], labels[i], cfg)
        for key in per_image:
            per_image[key].append(scores[key])
    return summarize(per_image) | {"n": n, "start": start, "config": cfg.to_dict(),
                                   "seconds_per_scene": (time.time() - tick) / n}


def paired(a, b) -> tuple[float, float]:
    """Mean and standard error of the per-scene difference ``a - b`` (two equal-length lists)."""
    diff = np.asarray(a, float) - np.asarray(b, float)
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))
