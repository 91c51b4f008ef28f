"""The inference path, its classifier half: the named features of images' rows (each image,
then its augmented views, from `extractor.pipeline` or a cache) -> the head's probabilities of
each image, averaged over its views (`classifier.views.average`), and the out-of-distribution
guard's score of each image, from its own row (view 0).

Written once, here, and used by `predict` (from a cache), `serve` (`/predict` and V2, around
which the service keeps its batching and limits) and the Python API (`ImageClassifier`), so a
head answers alike whichever way its images come.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from classifier.views import average


class Judge(Protocol):
    """A head as the inference path uses it (`classifier.artifact.LoadedHead`,
    `service.heads.ServedHead`)."""

    @property
    def has_guard(self) -> bool: ...

    def predict_proba(self, features: Any) -> NDArray[Any]: ...

    def ood_scores(self, features: Any) -> NDArray[Any] | None: ...


@dataclasses.dataclass(frozen=True)
class ImageProbabilities:
    #: (rows, classes): the head's probabilities of every row (an image or one of its views).
    rows: NDArray[np.float64]
    #: (images, classes): each image's mean over its rows, renormalised, in order of each
    #: image's first row.
    images: NDArray[np.float64]
    #: The position of each image's first row (its view 0) among the rows.
    first: NDArray[np.int64]
    #: The guard's score of each image's first row (1.0 is the threshold); None without a guard.
    ood_scores: NDArray[np.float64] | None


def probabilities(head: Judge, features: Mapping[str, NDArray[Any]],
                  groups: Any = None) -> ImageProbabilities:
    """The head's probabilities of the images whose rows `features` holds, averaged per image
    over its views. `groups`: which image each row belongs to (one label per row; an image's
    rows need not be consecutive, its first is its own); None: every row is one image's.

    `features` must hold what the head reads and, for a head with a guard, what the guard
    reads (a conv base's output holds both)."""
    n = len(next(iter(features.values()))) if features else 0
    labels = np.zeros(n, np.int64) if groups is None else np.asarray(groups)
    rows = np.asarray(head.predict_proba(features), dtype=np.float64)
    if n == 0:
        empty = np.zeros((0, rows.shape[1] if rows.ndim == 2 else 0), np.float64)
        return ImageProbabilities(rows, empty, np.zeros(0, np.int64), None)
    images, first = average(rows, labels)
    # Each image's own row alone: a view's score says nothing the image's does not, and the
    # service, `predict` and the API have always judged the image itself.
    scores = None
    if head.has_guard:
        alone = len(first) == n  # no views: every row is an image's own, no copy needed
        scores = head.ood_scores(features if alone else
                                 {name: np.asarray(v)[first] for name, v in features.items()})
    return ImageProbabilities(rows, images, first,
                              None if scores is None else np.asarray(scores, np.float64))
