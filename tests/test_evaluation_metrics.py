"""Metrics on hand-made cases whose answers are known by hand."""

import numpy as np
import pytest
import torch

from emerdiff_lab.evaluation.metrics import (
    BF_KEYS,
    boundary_f_score,
    boundary_tolerance,
    confusion_matrix,
    hungarian_miou,
    iou_per_class,
    label_boundary,
    mask_boundary,
    mean_iou,
    pixel_accuracy,
    score_matched,
    segmentation_scores,
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


# --- boundary F-score -------------------------------------------------------------------------

def _square(size=8, rows=(2, 6), cols=(2, 6), inside=1, outside=0):
    labels = np.full((size, size), outside)
    labels[rows[0]:rows[1], cols[0]:cols[1]] = inside
    return labels


def test_mask_and_label_boundaries_by_hand():
    square = _square()                                  # 4 x 4 square of 1 in an 8 x 8 image
    ring = square.astype(bool).copy()
    ring[3:5, 3:5] = False                              # its 12 edge pixels
    np.testing.assert_array_equal(mask_boundary(square == 1), ring)
    assert mask_boundary(square == 0).sum() == 16       # the 4 x 4 ring outside, no corners
    assert not mask_boundary(np.ones((5, 5), bool)).any()   # the image edge is no boundary
    np.testing.assert_array_equal(label_boundary(square),
                                  mask_boundary(square == 0) | mask_boundary(square == 1))


def test_boundary_f_score_identical_relabelled_and_empty_cases():
    gt = _square()
    relabelled = _square(inside=7, outside=3)
    for theta in (0.0, 1.0, 2.0):
        assert boundary_f_score(relabelled, gt, theta=theta).bf == pytest.approx(1.0)
        assert boundary_f_score(relabelled, gt, theta=theta,
                                class_agnostic=True).bf == pytest.approx(1.0)
    flat = np.zeros((6, 6), int)
    assert boundary_f_score(flat + 4, flat).bf == 1.0           # both boundaries empty
    split = flat.copy()
    split[:, 3:] = 1
    assert boundary_f_score(split, flat).bf == 0.0              # only the prediction has one
    assert boundary_f_score(flat, split).bf == 0.0              # only the truth has one
    assert boundary_f_score(split, flat, class_agnostic=True).bf == 0.0


def test_boundary_f_score_shift_within_and_beyond_theta_and_hand_value():
    gt = _square()
    wider = _square(cols=(2, 7))                        # right edge one pixel further right
    assert boundary_f_score(wider, gt, theta=1.0).bf == pytest.approx(1.0)
    # theta 0.5: only coinciding pixels count. Square: 10 of the prediction's 14 edge pixels
    # and of the truth's 12 coincide -> F = 2*10/(14+12); background: 12 of 18 and of 16 ->
    # 2*12/(18+16); the image's score is their mean.
    bf = boundary_f_score(wider, gt, theta=0.5)
    np.testing.assert_allclose(bf.per_class, [24 / 34, 20 / 26])
    assert bf.bf == pytest.approx((24 / 34 + 20 / 26) / 2)
    # a three-pixel shift of a vertical edge is beyond theta = 2: lower, and lower still at 1
    left = np.zeros((12, 12), int)
    left[:, 6:] = 1
    shifted = np.zeros((12, 12), int)
    shifted[:, 9:] = 1
    assert boundary_f_score(shifted, left, theta=2.0).bf == 0.0
    one_off = np.zeros((12, 12), int)
    one_off[:, 7:] = 1
    assert boundary_f_score(one_off, left, theta=1.0).bf == pytest.approx(1.0)
    partial = left.copy()
    partial[:6, 6:9] = 0                                # the top half's edge moved 3 px
    two, one = (boundary_f_score(partial, left, theta=t).bf for t in (2.0, 1.0))
    assert 0.0 < two < 1.0 and one <= two


def test_boundary_f_score_unmatched_clusters_ignore_and_scaling():
    gt = np.zeros((8, 8), int)
    gt[:, 4:] = 1
    pred = gt.copy()
    pred[:2, :2] = 2                  # a third cluster: unmatched, its pixels in no class
    result = boundary_f_score(pred, gt, theta=0.0)
    assert 0.0 < result.bf < 1.0
    assert boundary_f_score(pred, gt, theta=0.0, class_agnostic=True).bf < 1.0
    ignored = gt.copy()
    ignored[:2, :2] = 255             # the same pixels ignored: class 0's true mask ends there
    assert boundary_f_score(pred, ignored, theta=0.0).bf == pytest.approx(1.0)  # as predicted
    assert boundary_f_score(gt, ignored, theta=0.0,
                            class_agnostic=True).bf < 1.0        # gt edge at the ignored block
    assert boundary_tolerance((128, 128)) == pytest.approx(2.0)
    assert boundary_tolerance((64, 64)) == pytest.approx(1.0)
    assert boundary_tolerance((3, 512, 512), 1.0) == pytest.approx(4.0)
    scores = segmentation_scores(torch.from_numpy(pred), gt)
    assert set(scores) == {"miou", *BF_KEYS}
    assert scores["miou"] == pytest.approx(hungarian_miou(pred, gt).miou)
    with pytest.raises(ValueError, match="H, W"):
        boundary_f_score(np.zeros(4, int), np.zeros(4, int))
