"""Views at prediction time: a head trained on augmented views averages its probabilities over
the same views of each image it predicts (test-time augmentation).

Cross-validation on ELPV training data measured why both halves matter: training on views
without averaging at prediction gains little, and averaging without training on views loses
(BENCHMARKS.md, "Accuracy"). So a head records the views it was trained on (`Views`, in its
metadata), and `evaluate`, `predict` and `serve` average over the views a cache holds, or
compute, for each image.

Which rows an evaluation uses (`use_views`):
- the head was trained without views, or `tta=False`: each image's own row (view 0);
- the cache has no views: view 0, with a warning saying how to extract them;
- the cache's views are the head's kind (same mode; same seed for the random `recipe` mode):
  the mean over every view present, the image itself included;
- another kind of views: refused, naming both (pass tta=False / --no-tta to use view 0).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from classifier.errors import DataError

# The one `Views` type lives beside the code that makes views (extractor.augment); imported
# here so `from classifier.views import Views` keeps working for the classifier's modules.
from extractor.augment import Views

if TYPE_CHECKING:
    from classifier.data import Subset

__all__ = ["Views", "average", "predict_images", "use_views"]

logger = logging.getLogger(__name__)


def use_views(head: Views, data: Views, tta: bool, what: str) -> bool:
    """Whether to average over every view row of `data` (True) or use view 0 alone."""
    if not tta or not head:
        return False
    if not data:
        logger.warning(
            "the head was trained on %s but %s has none: predicting from each image alone. "
            "Extract it with --augment %d --augment-mode %s to average over views "
            "(or pass --no-tta to silence this)", head.describe(), what, head.count, head.mode)
        return False
    if not head.same_kind(data):
        raise DataError(
            f"{what} holds {data.describe()} but the head was trained on {head.describe()}; "
            f"extract it with --augment {head.count} --augment-mode {head.mode}"
            f"{f' --augment-seed {head.seed}' if head.mode == 'recipe' else ''}, "
            "or pass --no-tta to predict from each image alone"
        )
    return True


def average(
    proba: NDArray[np.floating], groups: NDArray[np.integer]
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Mean probabilities per image: (images, classes) in order of each image's first row,
    and the position of that first row."""
    groups = np.asarray(groups)
    uniq, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    sums = np.zeros((len(uniq), proba.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, proba)
    counts = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
    means = sums / counts[:, None]
    # float32 probabilities (scikit-learn keeps float32 input's dtype) sum to 1 within 1e-7
    # only: renormalise in float64, as log-loss and AUC expect.
    means /= means.sum(axis=1, keepdims=True)
    order = np.argsort(first, kind="stable")
    return means[order], first[order].astype(np.int64)


def predict_images(
    predict_proba: Callable[[Any], NDArray[np.floating]], subset: Subset, names: Sequence[str],
    averaged: bool, chunk_rows: int = 1024,
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Probabilities per image of `subset`, and the position of each image's first row.

    The cache is read `chunk_rows` at a time as named features; with `averaged`, an image's
    probabilities are the mean over all its rows (its views), else its own row (view 0) alone.
    """
    rows = np.arange(len(subset)) if averaged else np.flatnonzero(subset.views == 0)
    part = subset.take(rows)
    probas = []
    for start in range(0, len(part), chunk_rows):
        X, _ = part.take(slice(start, start + chunk_rows)).load(names=names)
        probas.append(np.asarray(predict_proba(X), dtype=np.float64))
    if not probas:
        return np.zeros((0, 0)), np.zeros((0,), np.int64)
    images, first = average(np.concatenate(probas), part.groups)
    return images, rows[first]
