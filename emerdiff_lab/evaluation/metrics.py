"""Segmentation metrics: confusion matrices, mIoU, pixel accuracy, Hungarian-matched mIoU.

Everything works on integer label maps (numpy arrays or torch tensors, any shape, typically (H, W));
pixels whose ground truth equals ``ignore_index`` are left out of every count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "HungarianResult", "confusion_matrix", "hungarian_match", "hungarian_miou", "iou_per_class",
    "mean_iou", "pixel_accuracy", "remap_confusion", "score_matched",
]


def _as_int_array(labels, name: str) -> np.ndarray:
    if hasattr(labels, "detach"):  # torch tensor, on any device
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer labels, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _check_pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    pred = _as_int_array(pred, "pred")
    gt = _as_int_array(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got pred {pred.shape} and "
                         f"gt {gt.shape}; resize one to the other first (nearest neighbour)")
    return pred, gt


def confusion_matrix(pred, gt, num_classes: int, num_pred: int | None = None,
                     ignore_index: int | None = 255) -> np.ndarray:
    """Counts of (ground-truth class, predicted label) pairs.

    Args:
        pred: integer predictions, any shape; values in [0, num_pred).
        gt: integer ground truth, same shape; values in [0, num_classes) or ``ignore_index``.
        num_classes: number of ground-truth classes (rows).
        num_pred: number of predicted labels (columns); default ``num_classes``. Cluster ids from an
            unsupervised method may outnumber the classes, hence a separate count.
        ignore_index: ground-truth value whose pixels are skipped (None: none skipped).

    Returns:
        (num_classes, num_pred) int64 matrix; entry [c, p] = pixels of class c predicted as p.
    """
    pred, gt = _check_pair(pred, gt)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    num_pred = num_classes if num_pred is None else int(num_pred)
    keep = np.ones(gt.shape, bool) if ignore_index is None else gt != ignore_index
    pred, gt = pred[keep], gt[keep]
    if gt.size and (gt.min() < 0 or gt.max() >= num_classes):
        raise ValueError(f"gt values must lie in [0, {num_classes}) or equal ignore_index "
                         f"({ignore_index}); found values in [{gt.min()}, {gt.max()}]")
    if pred.size and (pred.min() < 0 or pred.max() >= num_pred):
        raise ValueError(f"pred values must lie in [0, {num_pred}); found values in "
                         f"[{pred.min()}, {pred.max()}]")
    flat = gt * num_pred + pred
    return np.bincount(flat, minlength=num_classes * num_pred).reshape(num_classes, num_pred)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU of each class from a square (C, C) confusion matrix (rows gt, columns prediction).

    Classes absent from both ground truth and prediction get NaN (they do not enter the mean).
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square (C, C) matrix, got shape {confusion.shape}")
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def mean_iou(confusion: np.ndarray, present_only: bool = True) -> float:
    """Mean IoU in [0, 1] over the classes of a square confusion matrix.

    present_only: average over classes that occur in the ground truth (the usual dataset-level
    convention, e.g. mmseg); otherwise over every class with a non-empty union.
    """
    confusion = np.asarray(confusion)
    ious = iou_per_class(confusion)
    if present_only:
        ious = ious[confusion.sum(1) > 0]
    ious = ious[~np.isnan(ious)]
    return float(ious.mean()) if ious.size else float("nan")


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Fraction in [0, 1] of counted pixels whose prediction equals the ground truth."""
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


def hungarian_match(confusion: np.ndarray) -> np.ndarray:
    """One-to-one matching of predicted labels to classes that maximises matched pixels.

    Args:
        confusion: (C, P) matrix from :func:`confusion_matrix` (rows gt classes, columns clusters).

    Returns:
        (P,) int64 array mapping each predicted label to a class, or -1 for clusters left
        unmatched (when P > C the extra clusters match nothing and count as wrong everywhere).
    """
    confusion = np.asarray(confusion)
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    mapping = np.full(confusion.shape[1], -1, dtype=np.int64)
    mapping[cols] = rows
    return mapping


def remap_confusion(confusion: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """(C, P) cluster confusion -> (C, C) class confusion under ``mapping``.

    Columns mapped to -1 (unmatched clusters) are dropped; :func:`score_matched` still counts
    their pixels as misses through the ground-truth row sums.
    """
    num_classes = confusion.shape[0]
    out = np.zeros((num_classes, num_classes), dtype=confusion.dtype)
    for cluster, cls in enumerate(mapping):
        if cls >= 0:
            out[:, cls] += confusion[:, cluster]
    return out


@dataclass(frozen=True)
class HungarianResult:
    """Outcome of Hungarian-matched scoring.

    Attributes:
        miou: mean IoU in [0, 1] over classes present in the ground truth (NaN if none).
        pixel_accuracy: fraction in [0, 1] of counted pixels whose matched label is right.
        mapping: (P,) predicted label -> class, -1 for unmatched clusters.
        iou: (C,) per-class IoU in [0, 1], NaN for classes absent from gt and prediction.
        confusion: (C, C) class confusion after matching; pixels of unmatched clusters are
            in no column, so they count as misses of their true class.
    """

    miou: float
    pixel_accuracy: float
    mapping: np.ndarray
    iou: np.ndarray
    confusion: np.ndarray

    def __float__(self) -> float:
        return self.miou


def score_matched(cluster_confusion: np.ndarray) -> HungarianResult:
    """Hungarian-match a (C, P) cluster confusion and score it (per image or whole dataset)."""
    cluster_confusion = np.asarray(cluster_confusion, dtype=np.int64)
    mapping = hungarian_match(cluster_confusion)
    matched = remap_confusion(cluster_confusion, mapping)
    tp = np.diag(matched).astype(np.float64)
    gt_total = cluster_confusion.sum(1).astype(np.float64)  # unmatched pixels stay in the row
    pred_total = matched.sum(0).astype(np.float64)
    union = gt_total + pred_total - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    present = iou[gt_total > 0]
    miou = float(np.nanmean(present)) if present.size else float("nan")
    total = cluster_confusion.sum()
    accuracy = float(tp.sum() / total) if total else float("nan")
    return HungarianResult(miou=miou, pixel_accuracy=accuracy, mapping=mapping, iou=iou,
                           confusion=matched)


def hungarian_miou(pred, gt, num_classes: int | None = None,
                   ignore_index: int | None = 255) -> HungarianResult:
    """Per-image (or per-batch) mIoU after the best one-to-one cluster-to-class matching.

    Args:
        pred: integer cluster ids, any shape (typically (H, W)), values >= 0; the ids need not
            correspond to classes, only to groups.
        gt: integer ground truth of the same shape; values in [0, num_classes) or ignore_index.
        num_classes: number of gt classes; default ``max(gt) + 1`` over non-ignored pixels.
        ignore_index: gt value left out of every count (None: nothing ignored).

    Returns:
        :class:`HungarianResult`; ``float(result)`` or ``result.miou`` is the mIoU in [0, 1]
        averaged over the classes present in ``gt``. Clusters beyond the number of classes stay
        unmatched and count as misses. A perfect prediction under any relabelling scores 1.0.

    For a dataset-level Hungarian score, sum the (C, P) :func:`confusion_matrix` of every image
    with a shared cluster vocabulary and call :func:`score_matched` once.
    """
    pred, gt = _check_pair(pred, gt)
    valid = gt if ignore_index is None else gt[gt != ignore_index]
    if num_classes is None:
        if valid.size == 0:
            raise ValueError("num_classes cannot be inferred: every gt pixel equals ignore_index")
        num_classes = int(valid.max()) + 1
    if pred.size and pred.min() < 0:
        raise ValueError(f"pred values must be >= 0, found {pred.min()}")
    num_pred = int(pred.max()) + 1 if pred.size else 1
    confusion = confusion_matrix(pred, gt, num_classes, num_pred=num_pred,
                                 ignore_index=ignore_index)
    return score_matched(confusion)
