"""Curves and intervals computed from a head's probabilities on labelled images.

Plain numpy on (y, proba): `proba` is (images, classes), `y` the true column per image. Used by
the evaluation report (classifier/report.py); any caller with probabilities can reuse them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

#: The standard normal quantile of a two-sided 95% interval.
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default). Unlike the normal
    approximation it stays inside [0, 1] and is sensible at 0 or n successes and small n."""
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}]. Got {successes} instead.")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class RiskCoverage:
    """Selective prediction: answer only the most confident images, abstain on the rest.

    coverage[i] is the share of images answered when the i+1 most confident are, risk[i] the
    error rate among them; `aurc` is the area under that curve (lower is better)."""

    coverage: NDArray[np.float64]
    risk: NDArray[np.float64]
    threshold: NDArray[np.float64]  # the confidence of the last image answered
    aurc: float


def risk_coverage(y: NDArray[np.integer], proba: NDArray[np.floating]) -> RiskCoverage:
    """The risk-coverage curve, confidence being the top class's probability. Images with the
    same confidence are answered or abstained on together (one point per distinct value)."""
    y = np.asarray(y)
    proba = np.asarray(proba, dtype=np.float64)
    n = len(y)
    if n == 0:
        empty = np.zeros(0)
        return RiskCoverage(empty, empty, empty, math.nan)
    confidence = proba.max(axis=1)
    wrong = (proba.argmax(axis=1) != y).astype(np.float64)
    order = np.argsort(-confidence, kind="stable")
    confidence, wrong = confidence[order], wrong[order]
    errors = np.cumsum(wrong)
    # The last index of each run of equal confidences: a threshold answers all of a run.
    ends = np.flatnonzero(np.r_[confidence[1:] != confidence[:-1], True])
    answered = ends + 1
    coverage = answered / n
    risk = errors[ends] / answered
    # Area with the curve as a step function over coverage, from 0 to 1.
    widths = np.diff(np.r_[0.0, coverage])
    return RiskCoverage(coverage, risk, confidence[ends], float(np.sum(widths * risk)))


@dataclass(frozen=True)
class Reliability:
    """Calibration in bins of the top class's probability: a calibrated head's accuracy in a
    bin equals its mean confidence there. `ece` is their gap, weighted by the bins' counts."""

    edges: NDArray[np.float64]  # (bins + 1,)
    confidence: NDArray[np.float64]  # mean confidence per bin (nan when empty)
    accuracy: NDArray[np.float64]  # accuracy per bin (nan when empty)
    count: NDArray[np.int64]
    ece: float


def reliability(y: NDArray[np.integer], proba: NDArray[np.floating], bins: int = 10
                ) -> Reliability:
    if bins < 1:
        raise ValueError(f"bins must be at least 1. Got {bins} instead.")
    y = np.asarray(y)
    proba = np.asarray(proba, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    confidence = proba.max(axis=1) if len(y) else np.zeros(0)
    correct = (proba.argmax(axis=1) == y) if len(y) else np.zeros(0, dtype=bool)
    # Bins are (lo, hi]; the first one also takes 0.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / count
        acc = np.bincount(which, weights=correct.astype(np.float64), minlength=bins) / count
    filled = count > 0
    ece = (float(np.sum(count[filled] * np.abs(acc[filled] - mean_conf[filled])) / len(y))
           if len(y) else math.nan)
    return Reliability(edges, mean_conf, acc, count, ece)
