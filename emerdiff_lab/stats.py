"""Paired comparisons of two methods scored on the same images, and the sentence they support.

Two methods run on the same n images give n per-image differences. Their mean, standard error
and a 95% t-interval say whether one method is better *on this kind of image*; the verdict words
("beats", "ties with", "loses to") are derived from that interval only, never typed by hand:
the interval above zero, straddling zero, below zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy_stats

__all__ = ["PairedDifference", "conclusion", "paired_difference", "summarize", "verdict"]

VERDICTS = ("beats", "ties with", "loses to")


@dataclass(frozen=True)
class PairedDifference:
    """Summary of per-image differences ``a - b`` (same images, same order).

    Attributes:
        n: number of images (pairs).
        mean: mean difference, in the metric's units (mIoU: a fraction in [-1, 1]).
        sem: standard error of the mean difference (sample std with ddof=1, / sqrt(n)).
        ci_low, ci_high: two-sided ``confidence`` t-interval of the mean difference
            (n - 1 degrees of freedom).
        confidence: the interval's coverage, e.g. 0.95.
    """

    n: int
    mean: float
    sem: float
    ci_low: float
    ci_high: float
    confidence: float = 0.95

    @property
    def verdict(self) -> str:
        """"beats" (interval above 0), "loses to" (below 0) or "ties with" (contains 0)."""
        return verdict(self.ci_low, self.ci_high)

    def describe(self, digits: int = 3) -> str:
        """``"+0.084 ± 0.005 (95% CI +0.074 to +0.094, n = 48)"``: mean ± s.e., interval, n."""
        f = f"+.{digits}f"
        return (f"{self.mean:{f}} ± {self.sem:.{digits}f} ({self.confidence:.0%} CI "
                f"{self.ci_low:{f}} to {self.ci_high:{f}}, n = {self.n})")


def _values(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values; drop those images from both "
                         f"methods before comparing")
    return array


def paired_difference(a, b, *, confidence: float = 0.95) -> PairedDifference:
    """Mean, standard error and t-interval of the per-image differences ``a - b``.

    Args:
        a, b: per-image scores of two methods on the same images in the same order, sequences
            or arrays of n >= 2 finite floats.
        confidence: coverage of the two-sided interval, in (0, 1).

    Raises:
        ValueError: lengths differ, fewer than 2 pairs, non-finite values, bad ``confidence``.
    """
    a, b = _values(a, "a"), _values(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same images: a has {a.size} values, "
                         f"b has {b.size}")
    if a.size < 2:
        raise ValueError(f"a paired interval needs at least 2 images, got {a.size}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    diff = a - b
    n = int(diff.size)
    mean = float(diff.mean())
    sem = float(diff.std(ddof=1) / math.sqrt(n))
    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * sem
    return PairedDifference(n=n, mean=mean, sem=sem, ci_low=mean - half, ci_high=mean + half,
                            confidence=confidence)


def summarize(values) -> dict:
    """``{"mean", "sem", "n"}`` of one method's per-image scores (sem NaN when n < 2)."""
    array = _values(values, "values")
    if array.size == 0:
        raise ValueError("no values to summarise")
    sem = float(array.std(ddof=1) / math.sqrt(array.size)) if array.size > 1 else float("nan")
    return {"mean": float(array.mean()), "sem": sem, "n": int(array.size)}


def verdict(ci_low: float, ci_high: float) -> str:
    """The word a paired interval of ``a - b`` supports: "beats" when the whole interval is
    above zero, "loses to" when it is below zero, "ties with" when it contains zero."""
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)) or ci_low > ci_high:
        raise ValueError(f"expected a finite interval with low <= high, got [{ci_low}, "
                         f"{ci_high}]")
    if ci_low > 0:
        return "beats"
    if ci_high < 0:
        return "loses to"
    return "ties with"


def conclusion(a, b, name_a: str, name_b: str, *, metric: str = "mIoU",
               confidence: float = 0.95, digits: int = 3) -> str:
    """One sentence that compares method ``a`` with method ``b`` on the same images, e.g.
    ``"EmerDiff beats naive upsampling: mIoU difference +0.084 ± 0.005 (95% CI +0.074 to
    +0.094, n = 48)."`` The verb comes from :func:`verdict` of the paired interval."""
    diff = paired_difference(a, b, confidence=confidence)
    return f"{name_a} {diff.verdict} {name_b}: {metric} difference {diff.describe(digits)}."
