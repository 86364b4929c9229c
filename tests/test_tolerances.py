"""The tolerance helpers accept what is equal within their bounds and reject deliberate faults."""

import numpy as np
import pytest
import torch

from tolerances import (DECODED_ATOL, LABEL_AGREEMENT, assert_close, assert_decoded_close,
                        assert_labels_agree, assert_scores_close, label_agreement)


def test_relative_bound_scales_with_the_quantity():
    big = torch.full((4,), 1000.0)
    assert_close(big + 0.05, big, rel=1e-4)             # 5e-5 of the scale
    with pytest.raises(AssertionError, match="differ by"):
        assert_close(big + 0.5, big, rel=1e-4)          # 5e-4 of the scale
    small = torch.full((4,), 1e-3)
    with pytest.raises(AssertionError):
        assert_close(small + 1e-6, small, rel=1e-4)     # 1e-3 of the scale


def test_decoded_bound_is_in_image_units():
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert_decoded_close(image + DECODED_ATOL / 2, image)
    with pytest.raises(AssertionError):
        assert_decoded_close(image + 1 / 255, image)    # one 8-bit level is a real change


def _blobs(size=128, seed=0):
    """A label map like a segmentation's: four smooth regions from thresholded noise."""
    noise = torch.rand(1, 4, 4, 4, generator=torch.Generator().manual_seed(seed))
    smooth = torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear",
                                             align_corners=False)
    return smooth[0].argmax(0)


def test_label_agreement_tolerates_a_few_flipped_ties_but_not_a_shift():
    labels = _blobs()
    flipped = labels.clone()
    flipped.view(-1)[:50] = (flipped.view(-1)[:50] + 1) % 4  # 0.3% of pixels
    assert_labels_agree(flipped, labels)
    shifted = torch.roll(labels, 1, dims=1)
    assert label_agreement(shifted, labels) < LABEL_AGREEMENT
    with pytest.raises(AssertionError, match="agree on"):
        assert_labels_agree(shifted, labels)


def test_label_agreement_accepts_numpy_and_checks_shapes():
    labels = np.zeros((4, 4), np.int64)
    assert label_agreement(labels, labels) == 1.0
    with pytest.raises(AssertionError, match="shapes differ"):
        label_agreement(labels, labels[:2])


def test_scores_close_walks_nested_dicts():
    ref = {"hungarian": {"emerdiff": {"miou": 0.2637, "pixel_accuracy": 0.4886}}}
    assert_scores_close({"hungarian": {"emerdiff": {"miou": 0.2636, "pixel_accuracy": 0.4885}}},
                        ref)
    with pytest.raises(AssertionError, match="miou"):
        assert_scores_close({"hungarian": {"emerdiff": {"miou": 0.30, "pixel_accuracy": 0.4886}}},
                            ref)
    with pytest.raises(AssertionError):
        assert_scores_close({"hungarian": {}}, ref)
