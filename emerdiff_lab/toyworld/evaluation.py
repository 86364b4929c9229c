"""Held-out evaluation of EmerDiff on ToyWorld scenes, where the ground truth is exact.

For every scene: the k-means masks of the low-resolution features (nearest-upsampled: how
semantic the masks themselves are), the same masks upsampled bilinearly (the paper's naive
baseline), and EmerDiff's labels (raw maps, and each map divided by its maximum), all scored by
per-image Hungarian mIoU against the scene's class map.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..baselines import nearest_upsample, upsample_bilinear
from ..config import EmerDiffConfig
from ..evaluation.metrics import hungarian_miou
from ..session import Session
from .scenes import HELDOUT_SEED_START, generate_batch

METHODS = ("masks", "naive", "emerdiff", "emerdiff_norm")
__all__ = ["METHODS", "VALIDATION_SEED_START", "config_scores", "evaluate", "evaluate_scene",
           "heldout_scenes", "nearest_upsample", "random_control", "scene_predictions",
           "summarize"]
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


def evaluate_scene(model, pixels: torch.Tensor, labels: torch.Tensor,
                   cfg: EmerDiffConfig) -> dict[str, float]:
    """Per-image Hungarian mIoU of every method in ``METHODS`` for one scene.

    Args:
        model: an :class:`~emerdiff_lab.EmerDiffModel`.
        pixels: (3, S, S) float32 in [0, 1]. labels: (S, S) int64 class ids.
        cfg: EmerDiff settings (``normalize_maps`` is ignored: both variants are scored).
    """
    return {name: hungarian_miou(pred, labels).miou
            for name, pred in scene_predictions(model, pixels, cfg).items()}


def scene_predictions(model, pixels: torch.Tensor, cfg: EmerDiffConfig) -> dict:
    """Each method of ``METHODS``'s (S, S) int64 labels of one scene (pixels (3, S, S) in
    [0, 1]), from one :class:`~emerdiff_lab.session.Session`."""
    size = pixels.shape[-1]
    session = Session(model, pixels, cfg=cfg, image_size=size)
    lowres = session.masks(cfg)
    return {
        "masks": nearest_upsample(lowres, size),
        "naive": upsample_bilinear(lowres, size),
        "emerdiff": session.labels(cfg.replace(normalize_maps=False)),
        "emerdiff_norm": session.labels(cfg.replace(normalize_maps=True)),
    }


def config_scores(model, images: torch.Tensor, labels: torch.Tensor, configs: dict,
                  cfg: EmerDiffConfig | None = None, *,
                  progress: bool = False) -> dict[object, list[float]]:
    """Per-scene Hungarian mIoU of EmerDiff under each of ``configs`` ({name: EmerDiffConfig})
    and, under "naive", of ``cfg``'s masks upsampled bilinearly: a loop over configs on one
    :class:`~emerdiff_lab.session.Session` per scene, so each stage is computed once per the
    settings it reads (the deepest t_m is inverted first: its trajectory serves every other).

    Args:
        images: (n, 3, S, S) float32 in [0, 1]; labels: (n, S, S) int64.
        cfg: the naive baseline's settings (default ``model.default_config``).
    """
    cfg = cfg or model.default_config
    size = images.shape[-1]
    scores = {"naive": [], **{name: [] for name in configs}}
    bar = tqdm(total=len(images) * len(configs), desc="settings", disable=not progress)
    for image, truth in zip(images, labels):
        session = Session(model, image, cfg=cfg, image_size=size)
        session.inversion(cfg, depth=max(c.modulation_timestep for c in configs.values()))
        scores["naive"].append(hungarian_miou(upsample_bilinear(session.masks(cfg), size),
                                              truth).miou)
        for name, setting in configs.items():
            scores[name].append(hungarian_miou(session.labels(setting), truth).miou)
            bar.update()
    bar.close()
    return scores


def random_control(seed: int = 0):
    """The evaluation's random-weight control: ToyWorld's architecture and condition with seeded
    random UNet weights (``load_toyworld(random_weights=True, seed=seed)``)."""
    from .model import load_toyworld

    return load_toyworld(random_weights=True, seed=seed)


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
