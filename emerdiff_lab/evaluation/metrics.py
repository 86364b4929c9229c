"""Segmentation metrics: confusion matrices, mIoU, pixel accuracy, Hungarian-matched mIoU, and
the boundary F-score (BF) under the same matching.

Everything works on integer label maps (numpy arrays or torch tensors, any shape, typically (H, W);
the boundary F-score needs (H, W)); pixels whose ground truth equals ``ignore_index`` are left out
of every count.

mIoU counts pixels, so it barely moves when a method's edges move by a few pixels; BF measures
exactly that: how many predicted boundary pixels lie within a few pixels of a true boundary, and
the reverse (Csurka, Larlus & Perronnin, "What is a good evaluation measure for semantic
segmentation?", BMVC 2013). No maintained library provides it, so it is written here on scipy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

__all__ = [
    "BF_KEYS", "BoundaryResult", "HungarianResult", "boundary_f_score", "boundary_scores",
    "boundary_tolerance", "confusion_matrix", "hungarian_match", "hungarian_miou",
    "iou_per_class", "label_boundary", "mask_boundary", "mean_iou", "pixel_accuracy",
    "remap_confusion", "score_matched", "segmentation_scores",
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


# --- Boundary F-score -------------------------------------------------------------------------

_CROSS = ndimage.generate_binary_structure(2, 1)   # the 4-neighbourhood
REFERENCE_SIZE = 128   # px: tolerances are quoted at 128 x 128 and scaled with the diagonal
# The keys of :func:`segmentation_scores` beside "miou": BF at theta = 1 and 2 px (at 128 px,
# scaled with image size), and BF of all label changes (class-agnostic) at 2 px.
BF_KEYS = ("bf1", "bf2", "bf2_agnostic")


def boundary_tolerance(shape, px_at_128: float = 2.0) -> float:
    """BF's distance tolerance theta, in pixels, for an image of ``shape`` (..., H, W):
    ``px_at_128`` at 128 x 128, scaled with the image diagonal (64 x 64: half, 512 x 512: 4x).

    2 px at 128 px is a little looser than MATLAB's ``bfscore`` default (0.75% of the diagonal,
    1.4 px there); distances between pixel centres are 0, 1, 1.41, 2, ... so a theta below 1
    accepts only boundary pixels that coincide.
    """
    h, w = shape[-2:]
    return float(px_at_128 * np.hypot(h, w) / np.hypot(REFERENCE_SIZE, REFERENCE_SIZE))


def mask_boundary(mask) -> np.ndarray:
    """(H, W) bool: the pixels of ``mask`` (H, W) with a 4-neighbour outside it.

    The image edge is not a boundary: pixels beyond it count as inside (``border_value=1``), so a
    mask that fills the image has no boundary at all.
    """
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS, border_value=1)


def label_boundary(labels) -> np.ndarray:
    """(H, W) bool: pixels of the label map ``labels`` (H, W) with a 4-neighbour of another label
    (every label change; both sides of a change are boundary pixels, the image edge is not).
    Equal to the union over labels of :func:`mask_boundary`, so no matching is involved."""
    labels = np.asarray(labels)
    # mode="nearest" repeats the edge row/column outside the image: no change across the edge.
    high = ndimage.maximum_filter(labels, footprint=_CROSS, mode="nearest")
    low = ndimage.minimum_filter(labels, footprint=_CROSS, mode="nearest")
    return high != low


def _f_score(pred_boundary: np.ndarray, true_boundary: np.ndarray, theta: float) -> float:
    """BF of two (H, W) bool boundaries: 2PR / (P + R), P the share of predicted boundary pixels
    within Euclidean distance ``theta`` (px) of a true one and R the reverse; 1 when both are
    empty, 0 when exactly one is (or when no pixel of either lies within theta of the other)."""
    n_pred, n_true = int(pred_boundary.sum()), int(true_boundary.sum())
    if n_pred == 0 or n_true == 0:
        return float(n_pred == n_true)
    # distance_transform_edt gives each pixel's distance to the nearest zero: the boundary's.
    to_true = ndimage.distance_transform_edt(~true_boundary)
    to_pred = ndimage.distance_transform_edt(~pred_boundary)
    precision = float((to_true[pred_boundary] <= theta).mean())
    recall = float((to_pred[true_boundary] <= theta).mean())
    total = precision + recall
    return 2 * precision * recall / total if total > 0 else 0.0


@dataclass(frozen=True)
class BoundaryResult:
    """Outcome of :func:`boundary_f_score` for one image.

    Attributes:
        bf: the image's BF in [0, 1]: the mean of ``per_class`` over classes present in the
            ground truth (class-agnostic: the F-score of all label changes). NaN if no pixel is
            counted.
        per_class: (C,) BF of each class in [0, 1], NaN for classes absent from the ground
            truth; class-agnostic: (1,).
        theta: the distance tolerance used, in pixels.
    """

    bf: float
    per_class: np.ndarray
    theta: float

    def __float__(self) -> float:
        return self.bf


def boundary_f_score(pred, gt, *, theta: float | None = None, num_classes: int | None = None,
                     ignore_index: int | None = 255, class_agnostic: bool = False,
                     mapping: np.ndarray | None = None) -> BoundaryResult:
    """Per-image boundary F-score of cluster ids ``pred`` against classes ``gt``.

    Clusters are matched to classes as in :func:`hungarian_miou` (or by ``mapping``); pixels of
    unmatched clusters belong to no class. For each class present in ``gt``, the boundaries of
    its predicted and true masks (:func:`mask_boundary`) are compared by :func:`_f_score`; the
    image's score is the mean over those classes. Predicted boundary pixels on ignored pixels are
    left out (an ignored pixel's class is unknown), and so are true ones.

    Args:
        pred: (H, W) integer cluster ids >= 0 (any ids: only the grouping matters).
        gt: (H, W) integer classes in [0, num_classes) or ``ignore_index``.
        theta: tolerance in pixels; default :func:`boundary_tolerance` (2 px at 128 px).
        num_classes: number of gt classes; default ``max(gt) + 1`` over non-ignored pixels.
        ignore_index: gt value left out (None: nothing ignored).
        class_agnostic: compare all label changes of ``pred`` and ``gt`` (:func:`label_boundary`)
            instead, with no matching: one F-score per image. A change from a class to an
            ignored pixel is a true boundary, as it is for the class's mask.
        mapping: (P,) cluster -> class (-1: unmatched), e.g. ``hungarian_miou(...).mapping``, to
            reuse a matching already computed.

    Returns:
        :class:`BoundaryResult`; ``float(result)`` is the image's BF in [0, 1].
    """
    pred, gt = _check_pair(pred, gt)
    if pred.ndim != 2:
        raise ValueError(f"boundary_f_score needs (H, W) label maps, got shape {pred.shape}")
    if pred.size and pred.min() < 0:
        raise ValueError(f"pred values must be >= 0, found {pred.min()}")
    theta = boundary_tolerance(gt.shape) if theta is None else float(theta)
    if not theta >= 0:
        raise ValueError(f"theta must be a distance >= 0 in pixels, got {theta!r}")
    keep = np.ones(gt.shape, bool) if ignore_index is None else gt != ignore_index
    if class_agnostic:
        score = _f_score(label_boundary(pred) & keep, label_boundary(gt) & keep, theta)
        score = score if keep.any() else float("nan")
        return BoundaryResult(bf=score, per_class=np.array([score]), theta=theta)
    if mapping is None:
        mapping = hungarian_miou(pred, gt, num_classes, ignore_index).mapping
    mapping = np.asarray(mapping, dtype=np.int64)
    if pred.size and pred.max() >= mapping.size:
        raise ValueError(f"mapping covers clusters [0, {mapping.size}), pred has {pred.max()}")
    if num_classes is None:
        num_classes = int(max(gt[keep].max(initial=-1), mapping.max(initial=-1))) + 1
    matched = mapping[pred]                    # class of each pixel, -1 for unmatched clusters
    per_class = np.full(num_classes, np.nan)
    for cls in np.unique(gt[keep]):
        per_class[cls] = _f_score(mask_boundary(matched == cls) & keep,
                                  mask_boundary(gt == cls), theta)
    present = per_class[~np.isnan(per_class)]
    return BoundaryResult(bf=float(present.mean()) if present.size else float("nan"),
                          per_class=per_class, theta=theta)


def boundary_scores(pred, gt, mapping: np.ndarray, *, num_classes: int | None = None,
                    ignore_index: int | None = 255) -> dict[str, float]:
    """The boundary F-scores of :data:`BF_KEYS` for one image, each in [0, 1]: ``bf1`` and
    ``bf2`` (theta = 1 and 2 px at 128 px, :func:`boundary_tolerance` of the image) under
    ``mapping`` (cluster -> class, -1 unmatched; ``np.arange(C)`` when ``pred`` already holds
    classes), and ``bf2_agnostic`` (all label changes, no mapping). pred, gt: (H, W)."""
    kwargs = {"num_classes": num_classes, "ignore_index": ignore_index}
    theta1, theta2 = (boundary_tolerance(np.shape(gt), px) for px in (1.0, 2.0))
    return {"bf1": boundary_f_score(pred, gt, theta=theta1, mapping=mapping, **kwargs).bf,
            "bf2": boundary_f_score(pred, gt, theta=theta2, mapping=mapping, **kwargs).bf,
            "bf2_agnostic": boundary_f_score(pred, gt, theta=theta2, class_agnostic=True,
                                             **kwargs).bf}


def segmentation_scores(pred, gt, *, num_classes: int | None = None,
                        ignore_index: int | None = 255) -> dict[str, float]:
    """Every per-image score of cluster ids ``pred`` (H, W) against ``gt`` (H, W) under one
    Hungarian matching: ``{"miou", "bf1", "bf2", "bf2_agnostic"}``, each in [0, 1]
    (:func:`boundary_scores`)."""
    matched = hungarian_miou(pred, gt, num_classes, ignore_index)
    return {"miou": matched.miou} | boundary_scores(pred, gt, matched.mapping,
                                                    num_classes=num_classes,
                                                    ignore_index=ignore_index)
