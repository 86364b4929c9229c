"""Paired comparisons: the verdict words follow from the paired interval, and nothing else."""

import numpy as np
import pytest

from emerdiff_lab import stats


def test_clearly_better_method_beats():
    base = np.linspace(0.3, 0.6, 10)
    result = stats.paired_difference(base + 0.05 + 0.01 * np.sin(np.arange(10)), base)
    assert result.ci_low > 0 and result.verdict == "beats"
    assert stats.conclusion(base + 0.05, base + np.linspace(0, 0.01, 10), "A", "B").startswith(
        "A beats B: mIoU difference +0.0")


def test_noisy_difference_around_zero_ties():
    base = np.linspace(0.3, 0.6, 8)
    noise = np.array([0.02, -0.03, 0.01, -0.01, 0.03, -0.02, 0.0, 0.005])
    result = stats.paired_difference(base + noise, base)
    assert result.ci_low < 0 < result.ci_high and result.verdict == "ties with"
    assert " ties with " in stats.conclusion(base + noise, base, "A", "B")


def test_clearly_worse_method_loses():
    base = np.linspace(0.3, 0.6, 6)
    result = stats.paired_difference(base - 0.1 + 0.01 * np.cos(np.arange(6)), base)
    assert result.ci_high < 0 and result.verdict == "loses to"


def test_interval_is_the_t_interval():
    diff = np.array([0.1, 0.2, 0.3, 0.4])
    result = stats.paired_difference(diff, np.zeros(4))
    sem = diff.std(ddof=1) / 2
    assert result.mean == pytest.approx(0.25) and result.sem == pytest.approx(sem)
    assert result.ci_high - result.mean == pytest.approx(3.182446 * sem, rel=1e-5)  # t_0.975, 3 df
    assert result.n == 4 and "n = 4" in result.describe()


def test_pairs_are_paired_not_pooled():
    # Large spread between images, a constant per-image gain: the pooled means' intervals overlap,
    # the paired difference is unambiguous.
    base = np.array([0.1, 0.9, 0.2, 0.8, 0.5])
    assert stats.paired_difference(base + 0.01, base).verdict == "beats"


@pytest.mark.parametrize("a, b, match", [
    ([0.1, 0.2], [0.1], "same images"),
    ([0.1], [0.2], "at least 2"),
    ([0.1, float("nan")], [0.1, 0.2], "NaN"),
])
def test_bad_input_says_what_is_wrong(a, b, match):
    with pytest.raises(ValueError, match=match):
        stats.paired_difference(a, b)


def test_verdict_rejects_a_reversed_interval_and_summarize_counts():
    with pytest.raises(ValueError, match="low <= high"):
        stats.verdict(0.2, 0.1)
    summary = stats.summarize([0.2, 0.4])
    assert summary["n"] == 2 and summary["mean"] == pytest.approx(0.3)
    assert summary["sem"] == pytest.approx(0.1)
