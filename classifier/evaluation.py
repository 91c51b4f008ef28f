"""Evaluate a saved head on a labelled cache, refusing features made differently."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from classifier.artifact import load_head
from classifier.data import labelled_subset
from classifier.errors import DataError
from classifier.metrics import classification_metrics
from classifier.views import Views, predict_images, use_views
from extractor import open_cache
from extractor.spec import SpecMismatchError

logger = logging.getLogger(__name__)


def evaluate(
    head_dir: str | os.PathLike[str], cache_path: str | os.PathLike[str], tta: bool = True
) -> dict[str, Any]:
    """Metrics of the head on the cache's labelled images, keyed as `classification_metrics`.

    A head trained on augmented views averages its probabilities over each image's views in
    the cache (`classifier.views`); `tta=False` predicts from each image alone.
    """
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
        cache_views = Views.from_attrs(cache.attrs)
    averaged = use_views(head.views, cache_views, tta, f"cache {subset.path}")
    proba, first = predict_images(head.predict_proba, subset, head.feature_names, averaged)
    column = {name: i for i, name in enumerate(head.classes_)}
    y = np.array([column[names[c]] for c in subset.labels[first]], dtype=np.int64)
    out = classification_metrics(y, proba, head.classes_)
    views_used = int(np.max(subset.views)) + 1 if averaged and len(subset) else 1
    return {"head": str(Path(head_dir)), "cache": str(subset.path), "classes": head.classes_,
            "images": len(first), "views_averaged": views_used, **out}
