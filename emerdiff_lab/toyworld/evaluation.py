"""Held-out evaluation of EmerDiff on ToyWorld scenes, where the ground truth is exact.

For every scene: the k-means masks of the low-resolution features (nearest-upsampled: how
semantic the masks themselves are), the same masks upsampled bilinearly (the paper's naive
baseline), and EmerDiff's labels (raw maps, and each map divided by its maximum), all scored by
per-image Hungarian mIoU against the scene's class map and, under the same matching, by the
boundary F-score (:func:`method_scores`: how closely each method's edges follow the true ones,
which mIoU barely sees).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..baselines import nearest_upsample, upsample_bilinear
from ..config import EmerDiffConfig
from ..evaluation.metrics import BF_KEYS, segmentation_scores
from ..session import Session
from .scenes import HELDOUT_SEED_START, generate_batch

METHODS = ("masks", "naive", "emerdiff", "emerdiff_norm")
__all__ = ["METHODS", "SETTING_RULE", "VALIDATION_SEED_START", "choose_setting",
           "config_score_table", "config_scores", "evaluate",
           "evaluate_scene", "heldout_scenes", "method_scores", "nearest_upsample",
           "random_control", "scene_predictions", "score_keys", "summarize"]
# Seeds for choosing settings (validation), kept apart from the test scenes the table reports.
VALIDATION_SEED_START = HELDOUT_SEED_START + 1_000_000
# How :func:`choose_setting` weighs the two scores (written into every sweep's report).
SETTING_RULE = ("the highest mean boundary F-score (bf2: 2 px at 128 px) among the settings whose "
                "mean mIoU is within 0.01 of the best mean mIoU, on validation scenes")


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


def method_scores(name: str, pred, labels) -> dict[str, float]:
    """One method's scores on one scene, all under one Hungarian matching: ``{name: mIoU}`` (the
    key the records have always had) and ``{name + "_" + key: BF}`` for each key of
    :data:`~emerdiff_lab.evaluation.metrics.BF_KEYS` (theta 1 and 2 px at 128 px, scaled with
    the image; the class-agnostic BF at 2 px). pred, labels: (S, S) integer maps."""
    scores = segmentation_scores(pred, labels)
    return {name: scores["miou"]} | {f"{name}_{key}": scores[key] for key in BF_KEYS}


def score_keys(methods) -> tuple[str, ...]:
    """Every key :func:`method_scores` gives for ``methods``: the methods themselves (mIoU),
    then each method's boundary F-score keys."""
    return tuple(methods) + tuple(f"{m}_{key}" for m in methods for key in BF_KEYS)


def evaluate_scene(model, pixels: torch.Tensor, labels: torch.Tensor,
                   cfg: EmerDiffConfig) -> dict[str, float]:
    """Every method of ``METHODS``'s scores for one scene (:func:`method_scores`: mIoU under the
    method's name, boundary F-scores under ``name_bf1`` etc.).

    Args:
        model: an :class:`~emerdiff_lab.EmerDiffModel`.
        pixels: (3, S, S) float32 in [0, 1]. labels: (S, S) int64 class ids.
        cfg: EmerDiff settings (``normalize_maps`` is ignored: both variants are scored).
    """
    scores = {}
    for name, pred in scene_predictions(model, pixels, cfg).items():
        scores |= method_scores(name, pred, labels)
    return scores


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


def config_score_table(model, images: torch.Tensor, labels: torch.Tensor, configs: dict,
                       cfg: EmerDiffConfig | None = None, *,
                       progress: bool = False) -> dict[object, dict[str, list[float]]]:
    """Per-scene scores of EmerDiff under each of ``configs`` ({name: EmerDiffConfig}) and, under
    "naive", of ``cfg``'s masks upsampled bilinearly: ``{name: {"miou": [n], "bf1": [n], ...}}``
    (the keys of :func:`~emerdiff_lab.evaluation.metrics.segmentation_scores`). A loop over
    configs on one :class:`~emerdiff_lab.session.Session` per scene, so each stage is computed
    once per the settings it reads (the deepest t_m is inverted first: it serves every other).

    Args:
        images: (n, 3, S, S) float32 in [0, 1]; labels: (n, S, S) int64.
        cfg: the naive baseline's settings (default ``model.default_config``).
    """
    cfg = cfg or model.default_config
    size = images.shape[-1]
    table = {name: {} for name in ("naive", *configs)}

    def add(name, pred, truth):
        for key, value in segmentation_scores(pred, truth).items():
            table[name].setdefault(key, []).append(value)

    bar = tqdm(total=len(images) * len(configs), desc="settings", disable=not progress)
    for image, truth in zip(images, labels):
        session = Session(model, image, cfg=cfg, image_size=size)
        session.inversion(cfg, depth=max(c.modulation_timestep for c in configs.values()))
        add("naive", upsample_bilinear(session.masks(cfg), size), truth)
        for name, setting in configs.items():
            add(name, session.labels(setting), truth)
            bar.update()
    bar.close()
    return table


def choose_setting(table: dict, names=None, *, margin: float = 0.01,
                   boundary_key: str = "bf2"):
    """The name of the setting :data:`SETTING_RULE` picks from a :func:`config_score_table`.

    mIoU alone is nearly flat in the blur (it counts pixels, and the pixels near an edge are
    few), so it cannot tell sharp edges from smeared ones; BF alone could buy edges with regions.
    The rule keeps the settings that are within ``margin`` of the best mean mIoU, then takes the
    one whose edges follow the true ones best. Ties go to the first in ``names`` order.

    Args:
        table: ``{name: {"miou": [n], boundary_key: [n], ...}}`` per-scene scores.
        names: the candidates (default every key of ``table`` except "naive").
        margin: mIoU (a fraction in [0, 1]) a setting may give up for better edges.
        boundary_key: the boundary F-score key to maximise.
    """
    names = [n for n in table if n != "naive"] if names is None else list(names)
    miou = {n: float(np.mean(table[n]["miou"])) for n in names}
    best = max(miou.values())
    near = [n for n in names if miou[n] >= best - margin]
    return max(near, key=lambda n: float(np.mean(table[n][boundary_key])))


def config_scores(model, images: torch.Tensor, labels: torch.Tensor, configs: dict,
                  cfg: EmerDiffConfig | None = None, *,
                  progress: bool = False) -> dict[object, list[float]]:
    """Per-scene Hungarian mIoU ({name: [n floats]}) of :func:`config_score_table`."""
    table = config_score_table(model, images, labels, configs, cfg, progress=progress)
    return {name: scores["miou"] for name, scores in table.items()}


def random_control(seed: int = 0):
    """The evaluation's random-weight control: ToyWorld's architecture and condition with seeded
    random UNet weights (``load_toyworld(random_weights=True, seed=seed)``)."""
    from .model import load_toyworld

    return load_toyworld(random_weights=True, seed=seed)


def evaluate(model, n: int, cfg: EmerDiffConfig | None = None, *,
             start: int = HELDOUT_SEED_START, progress: bool = True) -> dict:
    """Evaluates ``model`` on ``n`` held-out scenes.

    Returns:
        dict with ``per_image`` ({key: [n floats]} for :func:`score_keys` of ``METHODS``: each
        method's mIoU under its name, its boundary F-scores under ``name_bf1`` etc.), ``mean``
        and ``sem`` ({key: float}, standard error of the mean over images), ``n``, ``start`` and
        ``config``.
    """
    cfg = cfg or model.default_config
    pixels, labels = heldout_scenes(n, start=start)
    per_image = {key: [] for key in score_keys(METHODS)}
    for i in tqdm(range(n), desc=f"eval {model.model_id}", disable=not progress):
        scores = evaluate_scene(model, pixels[i], labels[i], cfg)
        for key in per_image:
            per_image[key].append(scores[key])
    return summarize(per_image) | {"n": n, "start": start, "config": cfg.to_dict()}


def summarize(per_image: dict[str, list[float]]) -> dict:
    """Means and standard errors of per-image scores ({method: [floats]})."""
    mean = {m: float(np.mean(v)) for m, v in per_image.items()}
    sem = {m: float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
           for m, v in per_image.items()}
    return {"per_image": per_image, "mean": mean, "sem": sem}
