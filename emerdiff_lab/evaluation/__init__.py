"""Dataset-scale evaluation of EmerDiff: metrics, dataset readers, the paper's protocols, runner.

Metrics are importable without heavy dependencies::

    from emerdiff_lab.evaluation import hungarian_miou
    hungarian_miou(pred, gt).miou   # in [0, 1]
"""

from .metrics import (
    BF_KEYS,
    BoundaryResult,
    HungarianResult,
    boundary_f_score,
    boundary_scores,
    boundary_tolerance,
    confusion_matrix,
    hungarian_match,
    hungarian_miou,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
    remap_confusion,
    score_matched,
    segmentation_scores,
)

__all__ = [
    "BF_KEYS", "BoundaryResult", "HungarianResult", "boundary_f_score", "boundary_scores",
    "boundary_tolerance", "confusion_matrix", "hungarian_match", "hungarian_miou",
    "iou_per_class", "mean_iou", "pixel_accuracy", "remap_confusion", "score_matched",
    "segmentation_scores",
]
