"""The paper's evaluation protocols, computed from stored per-image records.

A record is a mapping of arrays for one image, all at the evaluation resolution (S, S)::

    gt               (S, S) int   class ids, ignore_index for unlabelled pixels
    emerdiff         (S, S) int   EmerDiff mask id per pixel, in [0, K)
    bilinear         (S, S) int   the baseline: the same k-means masks upsampled bilinearly
    mask_embeddings  (K, C) float mean low-resolution feature of each mask

Every protocol scores each method named in ``methods`` (default both) and returns
``{method: {"miou": float in [0, 1], "pixel_accuracy": float in [0, 1], ...}}``, with the
boundary F-scores of the same class assignment beside them: ``bf1``, ``bf2``, ``bf2_agnostic``
(:func:`~emerdiff_lab.evaluation.metrics.boundary_scores`; mean over images, each image's score
a mean over its classes), their standard errors ``bf1_sem``..., and ``bf_images`` (n). BF is a
per-image score whatever the protocol: only the class assignment differs between protocols.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from .metrics import (
    BF_KEYS,
    boundary_scores,
    boundary_tolerance,
    confusion_matrix,
    hungarian_match,
    mean_iou,
    pixel_accuracy,
    remap_confusion,
)

METHODS = ("emerdiff", "bilinear")
Records = Callable[[], Iterable[dict]]  # a fresh iterator per pass: datasets need not fit in RAM


def _iou_from_counts(tp: np.ndarray, gt_total: np.ndarray, pred_total: np.ndarray) -> dict:
    union = gt_total + pred_total - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    present = iou[gt_total > 0]
    total = gt_total.sum()
    return {"miou": float(np.nanmean(present)) if present.size else float("nan"),
            "pixel_accuracy": float(tp.sum() / total) if total else float("nan")}


def _scores(confusion: np.ndarray) -> dict:
    return {"miou": mean_iou(confusion), "pixel_accuracy": pixel_accuracy(confusion)}


class _Boundaries:
    """Per-image boundary F-scores of each method, collected image by image."""

    def __init__(self, methods, num_classes: int, ignore_index: int):
        self.values = {m: {key: [] for key in BF_KEYS} for m in methods}
        self.kwargs = {"num_classes": num_classes, "ignore_index": ignore_index}

    def add(self, method: str, pred: np.ndarray, gt: np.ndarray, mapping: np.ndarray) -> None:
        """pred (S, S) ids, gt (S, S) classes, mapping id -> class (-1: unmatched)."""
        if (gt != self.kwargs["ignore_index"]).any():   # an image with no labelled pixel: none
            for key, value in boundary_scores(pred, gt, mapping, **self.kwargs).items():
                self.values[method][key].append(value)

    def summary(self, method: str) -> dict:
        """``{key: mean, key + "_sem": standard error (ddof 1; NaN below 2 images),
        "bf_images": n}`` over the images added for ``method``."""
        out = {}
        for key, values in self.values[method].items():
            values = np.asarray(values, dtype=np.float64)
            out[key] = float(values.mean()) if values.size else float("nan")
            out[key + "_sem"] = (float(values.std(ddof=1) / np.sqrt(values.size))
                                 if values.size > 1 else float("nan"))
        out["bf_images"] = len(self.values[method][BF_KEYS[0]])
        return out


def hungarian(records: Records, num_classes: int, ignore_index: int = 255,
              methods: tuple[str, ...] = METHODS) -> dict:
    """Per-image Hungarian matching of masks to classes, IoU accumulated over the dataset.

    Each image's masks are matched one-to-one to its classes (extra masks unmatched, counted as
    misses); the matched counts are summed over images before the IoU, so large images weigh
    more. ``miou_image_mean`` is the plain mean of the per-image mIoUs, for reference.
    """
    sums = {m: [np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes), []]
            for m in methods}
    boundaries = _Boundaries(methods, num_classes, ignore_index)
    for record in records():
        for method in methods:
            pred = record[method]
            cm = confusion_matrix(pred, record["gt"], num_classes, num_pred=int(pred.max()) + 1,
                                  ignore_index=ignore_index)
            mapping = hungarian_match(cm)
            boundaries.add(method, pred, record["gt"], mapping)
            matched = remap_confusion(cm, mapping)
            tp, gt_total, pred_total = np.diag(matched), cm.sum(1), matched.sum(0)
            acc = sums[method]
            acc[0] += tp
            acc[1] += gt_total
            acc[2] += pred_total
            if gt_total.sum():
                acc[3].append(_iou_from_counts(tp, gt_total, pred_total)["miou"])
    out = {}
    for method, (tp, gt_total, pred_total, per_image) in sums.items():
        out[method] = _iou_from_counts(tp, gt_total, pred_total)
        out[method]["miou_image_mean"] = float(np.mean(per_image)) if per_image else float("nan")
        out[method] |= boundaries.summary(method)
    return out


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def concept_embeddings(records: Records, method: str, num_classes: int,
                       ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """First pass of the modified protocol: mean pixel embedding of every ground-truth class.

    A pixel's embedding is the embedding of the mask it is assigned to by ``method``, so the
    class mean is a count-weighted mean of mask embeddings.

    Returns:
        (num_classes, C) float64 concept embeddings (zeros for absent classes) and
        (num_classes,) int64 pixel counts.
    """
    sums, counts = None, np.zeros(num_classes, dtype=np.int64)
    for record in records():
        embeddings = np.asarray(record["mask_embeddings"], dtype=np.float64)
        cm = confusion_matrix(record[method], record["gt"], num_classes,
                              num_pred=len(embeddings), ignore_index=ignore_index)
        sums = cm @ embeddings if sums is None else sums + cm @ embeddings
        counts += cm.sum(1)
    if sums is None:
        raise ValueError("the modified protocol needs at least one image")
    return sums / np.maximum(counts, 1)[:, None], counts


def modified(records: Records, num_classes: int, ignore_index: int = 255,
             methods: tuple[str, ...] = METHODS) -> dict:
    """The paper's modified protocol (Table 2): no matching, nearest concept embedding.

    Pass 1 builds one concept embedding per class over the whole dataset
    (:func:`concept_embeddings`); pass 2 gives each pixel the class whose concept is nearest to
    its embedding and scores the result with the ordinary confusion-matrix mIoU. "Nearest" is the
    largest cosine similarity (our choice; the paper does not say). Classes absent from the
    ground truth get no concept and are never predicted.
    """
    out, identity = {}, np.arange(num_classes)
    boundaries = _Boundaries(methods, num_classes, ignore_index)
    for method in methods:
        concepts, counts = concept_embeddings(records, method, num_classes, ignore_index)
        present = np.flatnonzero(counts > 0)
        concepts = _normalize(concepts[present])
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        for record in records():
            similarity = _normalize(np.asarray(record["mask_embeddings"], np.float64)) @ concepts.T
            mask_class = present[similarity.argmax(axis=1)]
            confusion += confusion_matrix(mask_class[record[method]], record["gt"], num_classes,
                                          ignore_index=ignore_index)
            boundaries.add(method, mask_class[record[method]], record["gt"], identity)
        out[method] = _scores(confusion) | boundaries.summary(method)
    return out


def traditional(records: Records, num_classes: int, ignore_index: int = 255,
                methods: tuple[str, ...] = METHODS, seed: int = 0) -> dict:
    """The traditional protocol (Table 1): dataset-level clusters, one Hungarian matching.

    Pass 1 clusters every mask embedding of the dataset (L2-normalised) with k-means into
    ``num_classes`` groups (fewer if there are fewer masks); pass 2 labels each pixel with its
    mask's group, sums the (classes x groups) confusion over the dataset and matches groups to
    classes once with the Hungarian algorithm.
    """
    from sklearn.cluster import KMeans

    embeddings = [np.asarray(r["mask_embeddings"], np.float64) for r in records()]
    if not embeddings:
        raise ValueError("the traditional protocol needs at least one image")
    stacked = _normalize(np.concatenate(embeddings))
    groups = min(num_classes, len(stacked))
    assignment = KMeans(n_clusters=groups, n_init=10, random_state=seed).fit_predict(stacked)
    offsets = np.cumsum([0] + [len(e) for e in embeddings])
    out = {}
    boundaries = _Boundaries(methods, num_classes, ignore_index)
    for method in methods:
        confusion = np.zeros((num_classes, groups), dtype=np.int64)
        for index, record in enumerate(records()):
            mask_group = assignment[offsets[index]:offsets[index + 1]]
            confusion += confusion_matrix(mask_group[record[method]], record["gt"], num_classes,
                                          num_pred=groups, ignore_index=ignore_index)
        mapping = hungarian_match(confusion)
        matched = remap_confusion(confusion, mapping)
        for index, record in enumerate(records()):  # BF needs the dataset's matching: pass 3
            mask_group = assignment[offsets[index]:offsets[index + 1]]
            boundaries.add(method, mask_group[record[method]], record["gt"], mapping)
        out[method] = _iou_from_counts(np.diag(matched).astype(float), confusion.sum(1),
                                       matched.sum(0)) | boundaries.summary(method)
    return out


def direct(records: Records, num_classes: int, ignore_index: int = 255,
           methods: tuple[str, ...] = ("emerdiff", "bilinear")) -> dict:
    """Scores records whose ``methods`` arrays already hold class ids (open vocabulary)."""
    confusions = {m: np.zeros((num_classes, num_classes), dtype=np.int64) for m in methods}
    boundaries = _Boundaries(methods, num_classes, ignore_index)
    for record in records():
        for method in methods:
            confusions[method] += confusion_matrix(record[method], record["gt"], num_classes,
                                                   ignore_index=ignore_index)
            boundaries.add(method, record[method], record["gt"], np.arange(num_classes))
    return {method: _scores(cm) | boundaries.summary(method) for method, cm in confusions.items()}


def boundary_table(results: dict, protocols, image_size: int, fmt) -> list[str]:
    """Markdown lines: each protocol's boundary F-scores (``bf2`` ± s.e.; ``bf1``) for EmerDiff
    and the bilinear baseline, with n, from ``{protocol: {method: scores}}``; ``fmt`` formats a
    fraction (None: not available)."""
    theta = [boundary_tolerance((image_size,) * 2, px) for px in (2.0, 1.0)]
    lines = [f"| protocol | EmerDiff boundary F-score, θ = {theta[0]:.3g} px (mean ± s.e.); "
             f"θ = {theta[1]:.3g} px | SD bilinear, the same | images |", "|---|---|---|---|"]
    for protocol in protocols:
        scores = results[protocol]
        cells = [f"{fmt(scores[m].get('bf2'))} ± {fmt(scores[m].get('bf2_sem'))}; "
                 f"{fmt(scores[m].get('bf1'))}" for m in ("emerdiff", "bilinear")]
        lines.append(f"| {protocol} | {cells[0]} | {cells[1]} | "
                     f"{scores['emerdiff'].get('bf_images')} |")
    return lines
