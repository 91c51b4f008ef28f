"""Evaluate a saved head on a labelled cache, refusing features made differently."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from classifier.abstention import confidence, risk_coverage
from classifier.artifact import LoadedHead, load_head
from classifier.data import Subset, labelled_subset
from classifier.errors import DataError
from classifier.metrics import classification_metrics
from classifier.views import Views, predict_images, use_views
from extractor import open_cache
from extractor.spec import SpecMismatchError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Predictions:
    """What `evaluate`'s metrics are computed from, one entry per image (for reports)."""

    proba: NDArray[np.float64]  # (images, classes): columns in the head's class order
    y: NDArray[np.int64]  # (images,): the true class, a column of `proba`
    paths: list[str]  # each image's path in the cache, relative to `source_dir`
    source_dir: str | None  # the folder the cache was extracted from (its `source_dir` attr)
    cache_attrs: dict[str, Any]  # the cache's root attributes


def evaluate(
    head_dir: str | os.PathLike[str], cache_path: str | os.PathLike[str], tta: bool = True
) -> dict[str, Any]:
    """Metrics of the head on the cache's labelled images, keyed as `classification_metrics`.

    A head trained on augmented views averages its probabilities over each image's views in
    the cache (`classifier.views`); `tta=False` predicts from each image alone.
    """
    return evaluate_with_predictions(head_dir, cache_path, tta)[0]


def evaluate_with_predictions(
    head_dir: str | os.PathLike[str], cache_path: str | os.PathLike[str], tta: bool = True
) -> tuple[dict[str, Any], Predictions]:
    """`evaluate`'s metrics, and the per-image probabilities they came from."""
    head = load_head(head_dir)
    subset, spec, names = labelled_subset(cache_path, "evaluation cache", with_views=True)
    diffs = spec.feed_differences(head.spec)
    if diffs:
        detail = "; ".join(f"{k}: {t!r} vs {h!r}" for k, (t, h) in diffs.items())
        raise SpecMismatchError(
            f"cache {subset.path} was made differently from head {head.name} ({detail}); "
            f"features made differently cannot be mixed"
        )
    missing = spec.missing(head.feature_names)
    if missing:
        raise DataError(
            f"cache {subset.path} lacks features head {head.name} reads: {', '.join(missing)}; "
            f"extract it with the same --pooled-layers as the training cache"
        )
    unknown = sorted(set(names[i] for i in np.unique(subset.labels)) - set(head.classes_))
    if unknown:
        raise DataError(
            f"cache {subset.path} holds classes the head {head.name} was not trained on: "
            f"{', '.join(unknown)} (head classes: {', '.join(head.classes_)})"
        )
    with open_cache(subset.path) as cache:
        cache_attrs = dict(cache.attrs)
        cache_views = Views.from_attrs(cache_attrs)
        all_paths = cache.paths
    averaged = use_views(head.views, cache_views, tta, f"cache {subset.path}")
    proba, first = predict_images(head.predict_proba, subset, head.feature_names, averaged)
    column = {name: i for i, name in enumerate(head.classes_)}
    y = np.array([column[names[c]] for c in subset.labels[first]], dtype=np.int64)
    out = classification_metrics(y, proba, head.classes_)
    out["risk_coverage"] = risk_coverage(proba, y)
    if head.abstain_below is not None:
        answered = confidence(proba) >= head.abstain_below
        correct = np.argmax(proba, axis=1) == y
        out["abstention"] = {
            "threshold": head.abstain_below, "answered": int(answered.sum()),
            "accuracy": float(correct[answered].mean()) if answered.any() else None}
    if head.detector is not None:
        scores = _ood_scores(head, subset.take(first))
        flagged = scores > 1.0
        out["ood"] = {"method": head.detector.method,
                      "false_alarm_rate": head.detector.false_alarm_rate,
                      "flagged": int(flagged.sum()), "rate": float(flagged.mean()),
                      "median_score": float(np.median(scores)) if len(scores) else 0.0,
                      "ood_score": [float(v) for v in scores],
                      "in_distribution": [bool(not f) for f in flagged]}
    views_used = int(np.max(subset.views)) + 1 if averaged and len(subset) else 1
    metrics = {"head": str(Path(head_dir)), "cache": str(subset.path), "classes": head.classes_,
               "images": len(first), "views_averaged": views_used, **out}
    source_dir = cache_attrs.get("source_dir")
    predictions = Predictions(
        proba=proba, y=y, paths=[all_paths[i] for i in subset.indices[first]],
        source_dir=str(source_dir) if source_dir else None, cache_attrs=cache_attrs)
    return metrics, predictions


def _ood_scores(head: LoadedHead, images: Subset) -> NDArray[np.float64]:
    """The guard's score of each image (its own row), in the order of `images`."""
    assert head.detector is not None
    names = head.detector.feature_names
    out = []
    for start in range(0, len(images), 1024):
        feats, _ = images.take(slice(start, start + 1024)).load(names=names)
        out.append(head.detector.scores(feats))  # type: ignore[arg-type]
    return np.concatenate(out) if out else np.zeros(0)
