"""Held-out evaluation of EmerDiff on ToyWorld scenes, where the ground truth is exact.

For every scene: the k-means masks of the low-resolution features (nearest-upsampled: how
semantic the masks themselves are), the same masks upsampled bilinearly (the paper's naive
baseline), and EmerDiff's labels (raw maps, and each map divided by its maximum), all scored by
per-image Hungarian mIoU against the scene's class map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..assembly import prepare_maps, upsample_bilinear
from ..config import EmerDiffConfig
from ..evaluation.metrics import hungarian_miou
from ..features import extract_features, kmeans_masks
from ..inversion import invert
from ..modulation import pixel_change_maps
from .scenes import HELDOUT_SEED_START, generate_batch

METHODS = ("masks", "naive", "emerdiff", "emerdiff_norm")
# Seeds for choosing settings (validation), kept apart from the test scenes the table reports.
VALIDATION_SEED_START = HELDOUT_SEED_START + 1_000_000


def heldout_scenes(n: int, *, size: int = 64, start: int = HELDOUT_SEED_START):
    """The first ``n`` held-out scenes (seeds ``start``, ``start + 1``, ...).

    Returns:
        ``(pixels, labels)``: (n, 3, size, size) float32 in [0, 1] and (n, size, size) int64.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer (number of scenes), got {n!r}")
    images, labels = generate_batch(range(start, start + n), size)
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255,
            torch.from_numpy(labels))


def nearest_upsample(lowres: torch.Tensor, size: int) -> torch.Tensor:
    """(h, w) int64 labels -> (size, size) int64 by nearest neighbour (each cell a block)."""
    return F.interpolate(lowres[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()


def _miou(pred: torch.Tensor, gt: torch.Tensor) -> float:
    return float(hungarian_miou(pred.cpu().numpy(), gt.cpu().numpy()).miou)


def evaluate_scene(model, pixels: torch.Tensor, labels: torch.Tensor,
                   cfg: EmerDiffConfig) -> dict[str, float]:
    """Per-image Hungarian mIoU of every method in ``METHODS`` for one scene.

    Args:
        model: an :class:`~emerdiff_lab.EmerDiffModel`.
        pixels: (3, S, S) float32 in [0, 1]. labels: (S, S) int64 class ids.
        cfg: EmerDiff settings (``normalize_maps`` is ignored: both variants are scored).
    """
    size = pixels.shape[-1]
    features = extract_features(model, pixels, cfg)
    lowres = kmeans_masks(features, k=cfg.num_masks, seed=cfg.seed,
                          normalization=cfg.feature_normalization)
    inversion = invert(model, pixels, cfg, progress=False)
    raw = pixel_change_maps(model, inversion, lowres, cfg, progress=False)
    return {
        "masks": _miou(nearest_upsample(lowres, size), labels),
        "naive": _miou(upsample_bilinear(lowres, size), labels),
        "emerdiff": _miou(prepare_maps(raw, cfg.blur_sigma, False).argmax(0), labels),
        "emerdiff_norm": _miou(prepare_maps(raw, cfg.blur_sigma, True).argmax(0), labels),
    }


def evaluate(model, n: int, cfg: EmerDiffConfig | None = None, *,
             start: int = HELDOUT_SEED_START, progress: bool = True) -> dict:
    """Evaluates ``model`` on ``n`` held-out scenes.

    Returns:
        dict with ``per_image`` ({method: [n floats]}), ``mean`` and ``sem`` ({method: float},
        standard error of the mean over images), ``n``, ``start`` and ``config``.
    """
    cfg = cfg or model.default_config
    pixels, labels = heldout_scenes(n, start=start)
    per_image = {m: [] for m in METHODS}
    for i in tqdm(range(n), desc=f"eval {model.model_id}", disable=not progress):
        scores = evaluate_scene(model, pixels[i], labels[i], cfg)
        for m in METHODS:
            per_image[m].append(scores[m])
    return summarize(per_image) | {"n": n, "start": start, "config": cfg.to_dict()}


def summarize(per_image: dict[str, list[float]]) -> dict:
    """Means and standard errors of per-image scores ({method: [floats]})."""
    mean = {m: float(np.mean(v)) for m, v in per_image.items()}
    sem = {m: float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
           for m, v in per_image.items()}
    return {"per_image": per_image, "mean": mean, "sem": sem}
