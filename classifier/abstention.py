"""Abstention: answer only when confident enough.

A head's confidence in an image is its highest class probability. The risk-coverage curve
sorts images by confidence and measures accuracy on the most confident share (coverage) of
them; its area (AURC: the mean error over every coverage from one image to all) sums it up,
lower being better. `choose_threshold` picks the confidence at which the answered images reach
a target accuracy, on cross-validated probabilities (`train-head --target-accuracy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: Coverages `evaluate` reports: abstaining on the least confident 0, 5, 10 and 20%.
COVERAGES = (1.0, 0.95, 0.9, 0.8)


def confidence(proba: NDArray[np.floating]) -> NDArray[np.float64]:
    return np.asarray(proba, dtype=np.float64).max(axis=1)


def risk_coverage(proba: NDArray[np.floating], y: NDArray[np.integer],
                  coverages: Sequence[float] = COVERAGES) -> dict[str, Any]:
    """Accuracy at each coverage (the most confident share answered) and the curve's area."""
    proba = np.asarray(proba, dtype=np.float64)
    n = len(proba)
    if n == 0:
        return {"coverage": list(coverages), "accuracy": [None] * len(coverages), "aurc": None}
    order = np.argsort(-confidence(proba), kind="stable")
    correct = (np.argmax(proba, axis=1) == np.asarray(y))[order].astype(np.float64)
    answered = np.arange(1, n + 1)
    accuracy_at = np.cumsum(correct) / answered  # accuracy on the k most confident
    acc = [float(accuracy_at[max(round(c * n), 1) - 1]) for c in coverages]
    return {"coverage": [float(c) for c in coverages], "accuracy": acc,
            "aurc": float(np.mean(1.0 - accuracy_at))}


def choose_threshold(proba: NDArray[np.floating], y: NDArray[np.integer],
                     target: float) -> dict[str, Any]:
    """The lowest confidence threshold whose answered images (confidence >= it) reach
    `target` accuracy, with the coverage and accuracy it gives on these images.

    `reached` is False when no threshold reaches the target: the threshold is then the one of
    the best accuracy (ties: the larger coverage)."""
    if not 0 < target <= 1:
        raise ValueError(f"target accuracy must be in (0, 1]; got target_accuracy={target!r}")
    conf = confidence(proba)
    order = np.argsort(-conf, kind="stable")
    correct = (np.argmax(proba, axis=1) == np.asarray(y))[order].astype(np.float64)
    sorted_conf = conf[order]
    acc = np.cumsum(correct) / np.arange(1, len(conf) + 1)
    # Only cut between distinct confidences: equal confidences are answered alike.
    last_of_value = np.r_[sorted_conf[1:] < sorted_conf[:-1], True]
    ok = np.flatnonzero(last_of_value & (acc >= target - 1e-12))
    reached = len(ok) > 0
    if reached:
        i = int(ok[-1])
    else:
        cand = np.flatnonzero(last_of_value)
        i = int(cand[np.lexsort((cand, acc[cand]))[-1]])
    return {"threshold": float(sorted_conf[i]), "target_accuracy": float(target),
            "reached": reached, "cv_coverage": float((i + 1) / len(conf)),
            "cv_accuracy": float(acc[i])}
