"""Train a head on a feature cache, measure it, and save it as an artifact (`train`)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from classifier.artifact import check_replaceable, save_head
from classifier.data import Subset, training_data
from classifier.dense import DenseHead
from classifier.metrics import classification_metrics
from classifier.registry import make_head

logger = logging.getLogger(__name__)

DEFAULT_HEAD = "logreg"
#: Above this many bytes of feature maps the dense head streams batches from the cache
#: instead of reading the set into memory (ELPV's 714 maps are 23 MB: read at once).
STREAM_ABOVE_BYTES = 1 << 30


def train(
    cache_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    head: str = DEFAULT_HEAD,
    val_cache: str | os.PathLike[str] | None = None,
    val_split: float = 0.2,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    overwrite: bool = False,
    stream_above_bytes: int = STREAM_ABOVE_BYTES,
) -> Path:
    """Train a `head` ("logreg", "svm", "dense") on `cache_path`; return the artifact's path.

    Validation: `val_cache` when given (same feature spec and class names, else refused),
    otherwise a stratified hold-out of `val_split` of the training cache, drawn with `seed`.
    `params` are the head's constructor parameters (pooling, C, learning_rate, ...) beyond
    `seed`. Raises `DataError`, `extractor.SpecMismatchError` or `extractor.CacheError` (with
    a one-line message) for unusable input.
    """
    check_replaceable(Path(out_dir), overwrite)  # before training, not after
    params = dict(params or {})
    params.setdefault("seed", seed)
    model = make_head(head, **params)
    data = training_data(cache_path, val_cache, val_split, seed)
    model.check_spec(data.spec)
    k = len(data.class_names)
    logger.info(
        "training %s head on %d rows, validating on %d (%s)",
        head, len(data.train), len(data.validation), data.validation_source,
    )

    start = time.perf_counter()
    streamed = isinstance(model, DenseHead) and data.train.nbytes > stream_above_bytes
    if streamed:
        from classifier.streaming import CacheBatches

        bs = int(model.get_params()["batch_size"])
        model.fit(
            CacheBatches(data.train, bs, shuffle=True, seed=seed), None,
            validation_data=(CacheBatches(data.validation, 256, shuffle=False, seed=seed), None),
        )
    else:
        X, y = data.train.load(model.reduce)
        Xv, yv = data.validation.load(model.reduce)
        model.fit(X, y, validation_data=(Xv, yv))
    train_seconds = time.perf_counter() - start

    metrics = {
        "train": _measure(model, data.train, k, data.class_names),
        "validation": _measure(model, data.validation, k, data.class_names),
    }
    logger.info(
        "%s head: train accuracy %.4f, validation accuracy %.4f (%.1fs)",
        head, metrics["train"]["accuracy"], metrics["validation"]["accuracy"], train_seconds,
    )
    extra = {
        "data": {
            "train_cache": str(Path(cache_path).resolve()),
            "train_size": len(data.train),
            "train_class_counts": data.train.class_counts(k),
            "validation": data.validation_source,
            "validation_size": len(data.validation),
            "validation_class_counts": data.validation.class_counts(k),
            "streamed": streamed,
        },
        "train_seconds": round(train_seconds, 3),
    }
    if getattr(model, "best_epoch_", None) is not None:
        extra["best_epoch"] = int(model.best_epoch_)  # type: ignore[attr-defined]
    return save_head(model, out_dir, spec=data.spec, class_names=data.class_names,
                     metrics=metrics, extra=extra, overwrite=overwrite)


def _measure(model: Any, subset: Subset, k: int, class_names: list[str]) -> dict[str, Any]:
    """Metrics over all cache classes: the head's columns are placed at their class index."""
    proba = np.zeros((len(subset), k))
    offset = 0
    chunk = 1024
    for start in range(0, len(subset), chunk):
        part = Subset(subset.path, subset.indices[start : start + chunk],
                      subset.labels[start : start + chunk], subset.feature_shape)
        X, _ = part.load(model.reduce)
        proba[offset : offset + len(X)][:, model.classes_] = model.predict_proba(X)
        offset += len(X)
    return classification_metrics(subset.labels, proba, class_names)
