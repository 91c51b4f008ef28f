"""Evaluate a saved head on a labelled cache, refusing features made differently."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from classifier.artifact import load_head
from classifier.data import CHUNK_ROWS, labelled_subset
from classifier.errors import DataError
from classifier.metrics import classification_metrics
from extractor import open_cache

logger = logging.getLogger(__name__)


def evaluate(
    head_dir: str | os.PathLike[str], cache_path: str | os.PathLike[str]
) -> dict[str, Any]:
    """Metrics of the head on the cache's labelled rows, keyed as `classification_metrics`."""
    head = load_head(head_dir)
    subset, spec, names = labelled_subset(cache_path, "evaluation cache")
    head.spec.check_compatible(spec, what=f"cache {subset.path}", against=f"head {head.name}")
    unknown = sorted(set(names[i] for i in np.unique(subset.labels)) - set(head.classes_))
    if unknown:
        raise DataError(
            f"cache {subset.path} holds classes the head {head.name} was not trained on: "
            f"{', '.join(unknown)} (head classes: {', '.join(head.classes_)})"
        )
    column = {name: i for i, name in enumerate(head.classes_)}
    y = np.array([column[names[c]] for c in subset.labels], dtype=np.int64)
    probas = []
    with open_cache(subset.path) as cache:
        for feats, _ in cache.iter_batches(CHUNK_ROWS, subset.indices):
            probas.append(head.predict_proba(feats))
    proba = np.concatenate(probas)
    out = classification_metrics(y, proba, head.classes_)
    return {"head": str(Path(head_dir)), "cache": str(subset.path), "classes": head.classes_,
            **out}
