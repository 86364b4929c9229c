"""Metrics on hand-made cases whose answers are known by hand."""

import numpy as np
import pytest
import torch

from emerdiff_lab.evaluation.metrics import (
    confusion_matrix,
    hungarian_miou,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
    score_matched,
)


def test_confusion_matrix_known_counts_and_ignore():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = confusion_matrix(pred, gt, num_classes=3)
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    np.testing.assert_array_equal(cm, expected)
    # IoU: class0 1/(2+2-1)=1/3, class1 2/(2+3-2)=2/3, class2 0/(1+0)=0
    np.testing.assert_allclose(iou_per_class(cm), [1 / 3, 2 / 3, 0.0])
    assert mean_iou(cm) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert pixel_accuracy(cm) == pytest.approx(3 / 5)


def test_absent_class_does_not_enter_mean():
    cm = np.array([[4, 0, 0], [0, 0, 0], [0, 0, 2]])
    assert mean_iou(cm) == pytest.approx(1.0)
    assert np.isnan(iou_per_class(cm)[1])


def test_relabelled_perfect_prediction_scores_one():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, size=(16, 16))
    gt[0, :4] = 255
    perm = np.array([3, 7, 0, 2, 5])
    pred = perm[np.where(gt == 255, 0, gt)]
    result = hungarian_miou(torch.from_numpy(pred), gt)
    assert result.miou == pytest.approx(1.0)
    assert float(result) == pytest.approx(1.0)
    assert result.pixel_accuracy == pytest.approx(1.0)
    assert [result.mapping[p] for p in perm] == [0, 1, 2, 3, 4]


def test_extra_clusters_stay_unmatched_and_count_as_misses():
    gt = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    pred = np.array([0, 0, 2, 2, 1, 1, 1, 1])  # class 0 split in two clusters
    result = hungarian_miou(pred, gt)
    assert result.mapping[2] == -1 or result.mapping[0] == -1
    # class 0: 2 right of 4 -> IoU 0.5; class 1 perfect -> mean 0.75
    assert result.miou == pytest.approx(0.75)
    assert result.pixel_accuracy == pytest.approx(6 / 8)


def test_fewer_clusters_than_classes():
    gt = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 0, 1, 1])
    result = hungarian_miou(pred, gt, num_classes=3)
    # best: cluster0->class0 (IoU 2/4) or class1 (2/4), cluster1->class2 (1); third class 0
    assert result.miou == pytest.approx((0.5 + 0 + 1) / 3)


def test_dataset_level_score_matched_accumulates():
    a = confusion_matrix(np.array([1, 1, 0]), np.array([0, 0, 1]), 2, num_pred=2)
    b = confusion_matrix(np.array([1, 0]), np.array([0, 1]), 2, num_pred=2)
    assert score_matched(a + b).miou == pytest.approx(1.0)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="same shape"):
        hungarian_miou(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="integer"):
        hungarian_miou(np.zeros((2, 2)), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="gt values"):
        confusion_matrix(np.zeros(3, int), np.array([0, 1, 5]), num_classes=2)
    with pytest.raises(ValueError, match="ignore_index"):
        hungarian_miou(np.zeros(3, int), np.full(3, 255))
