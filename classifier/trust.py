"""What `train-head` fits beside a head to say when to trust it: the out-of-distribution guard
(`classifier.ood`) on the training images' pooled vectors, and, with a target accuracy, the
confidence below which the head abstains (`classifier.abstention`), chosen on cross-validated
probabilities of the training cache (folds as `classifier.selection` draws them)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from classifier.abstention import choose_threshold
from classifier.data import Subset
from classifier.heads import Head
from classifier.ood import (
    MIN_IMAGES,
    OODDetector,
    detector_names,
    detector_vectors,
    fit_detector,
)
from classifier.registry import make_head
from classifier.selection import folds, usable_folds
from classifier.views import average
from extractor import FeatureSpec

logger = logging.getLogger(__name__)


def fit_guard(model: Head, train: Subset, spec: FeatureSpec, *, method: str,
              false_alarm_rate: float, seed: int) -> OODDetector | None:
    """The detector on the training images (each image's own row, never its views); None, with
    a warning, when there are too few images to set its threshold by cross-validation."""
    names = detector_names(model.feature_names_ or [spec.layer], spec.pooled_layers, spec.layer)
    plain = train.take(np.flatnonzero(train.views == 0))
    if len(plain) < MIN_IMAGES:
        logger.warning("no out-of-distribution guard: %d training images, it needs at least %d",
                       len(plain), MIN_IMAGES)
        return None
    vectors, labels = plain.load(lambda f: detector_vectors(f, names), names)
    return fit_detector(vectors, names, labels=labels, method=method,
                        false_alarm_rate=false_alarm_rate, seed=seed)


def abstention_threshold(model: Head, train: Subset, spec: FeatureSpec, *, target: float,
                         cv: int, seed: int, averaging: bool) -> dict[str, Any]:
    """The confidence threshold reaching `target` accuracy on the answered images of `cv`-fold
    out-of-fold predictions, each fold's head fitted with the chosen settings."""
    k = usable_folds(train, max(cv, 2))
    if k < 2:
        raise ValueError("cannot choose an abstention threshold: a class has a single training "
                         "image, so there is nothing to cross-validate")
    params = model.get_params()
    names = model.feature_names_ or []
    features, labels = train.load(names=names)
    probas, truths = [], []
    for tr, te in folds(train, k, seed):
        head = make_head(model.kind, **params)
        head.use_features(spec)
        X = head.reduce(features)
        head.fit(X[tr], labels[tr])
        rows = te if averaging else te[train.views[te] == 0]
        images, first = average(np.asarray(head.predict_proba(X[rows]), np.float64),
                                train.groups[rows])
        column = {int(c): i for i, c in enumerate(head.classes_)}
        probas.append(images)
        truths.append(np.array([column.get(int(c), -1) for c in labels[rows][first]]))
    out = choose_threshold(np.concatenate(probas), np.concatenate(truths), target)
    out["cv_folds"] = k
    if not out["reached"]:
        logger.warning("no confidence threshold reaches accuracy %.3f in %d-fold CV; abstaining "
                       "below %.3f, the best (CV accuracy %.4f at coverage %.3f)", target, k,
                       out["threshold"], out["cv_accuracy"], out["cv_coverage"])
    else:
        logger.info("abstaining below confidence %.4f: CV accuracy %.4f at coverage %.3f",
                    out["threshold"], out["cv_accuracy"], out["cv_coverage"])
    return out
