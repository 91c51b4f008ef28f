"""Train a head on a feature cache, measure it, and save it as an artifact (`train`)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from classifier.artifact import check_replaceable, save_head
from classifier.data import Subset, TrainingData, training_data
from classifier.dense import DenseHead
from classifier.errors import DataError
from classifier.heads import Head
from classifier.metrics import classification_metrics
from classifier.ood import DEFAULT_FALSE_ALARM_RATE, DEFAULT_METHOD
from classifier.registry import HEADS, make_head
from classifier.sampling import (
    COPIES,
    CV_ROWS,
    MEMORY_BYTES,
    floats_per_row,
    rows_within,
    stratified_sample,
)
from classifier.selection import (
    DEFAULT_FOLDS,
    SELECTABLE,
    Candidate,
    candidates,
    choose,
    cross_validate,
    usable_folds,
)
from classifier.trust import abstention_threshold, fit_guard
from classifier.views import Views, predict_images, use_views
from extractor import FeatureSpec, open_cache

logger = logging.getLogger(__name__)

DEFAULT_HEAD = "logreg"
#: Above this many bytes of feature maps the dense head streams batches from the cache
#: instead of reading the set into memory (ELPV's 714 maps are 23 MB: read at once).
STREAM_ABOVE_BYTES = 1 << 30
#: Parameters cross-validation chooses for the scikit-learn heads when not given.
SELECTED = ("C", "layers")


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
    cv: int = DEFAULT_FOLDS,
    tta: bool = True,
    memory_bytes: int = MEMORY_BYTES,
    cv_rows: int = CV_ROWS,
    ood: str | None = DEFAULT_METHOD,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    target_accuracy: float | None = None,
) -> Path:
    """Train a head on `cache_path`; return the artifact's path.

    `head` is "logreg", "svm", "dense", "finetune" or "auto" (the best of logreg and svm by
    cross-validation). For logreg, svm and auto, the settings not given in `params` (C, which
    layers' pooled features; with auto the kind) are chosen by `cv`-fold cross-validation on
    the training cache (`classifier.selection`); `cv=0` skips it and uses each head's
    defaults. `params` are the head's constructor parameters beyond `seed`.

    Validation: `val_cache` when given (same feature spec and class names, else refused),
    otherwise a stratified hold-out of `val_split` of the training cache, drawn with `seed`;
    it is measured once, after training, never used to choose. With a cache of augmented
    views the head averages its probabilities over each image's views (`tta`;
    `classifier.views`). Memory stays bounded (`classifier.sampling`): cross-validation runs
    on a stratified sample of at most `cv_rows` rows, and the final fit on every row when its
    features fit `memory_bytes`, else on the largest stratified sample that does (both stated
    in the metadata, `data`). Raises `DataError`, `extractor.SpecMismatchError` or
    `extractor.CacheError` (with a one-line message) for unusable input.

    Trust (`classifier.trust`): `ood` ("mahalanobis", "knn"; None: none) fits the
    out-of-distribution guard, its threshold at `false_alarm_rate` of cross-validated training
    images; `target_accuracy` chooses by cross-validation the confidence below which the head
    abstains.
    """
    check_replaceable(Path(out_dir), overwrite)  # before training, not after
    params = dict(params or {})
    params.setdefault("seed", seed)
    if head not in (*HEADS, "auto"):
        raise ValueError(f"head must be one of {', '.join((*HEADS, 'auto'))}; got head={head!r}")
    if cv == 1 or cv < 0:
        raise DataError(f"cv must be 0 (no selection) or at least 2 folds; got cv={cv}")
    data = training_data(cache_path, val_cache, val_split, seed)
    views = _cache_views(data.train.path)
    averaging = bool(views) and tta

    selection: dict[str, Any] | None = None
    kind = head
    cv_set = data.train
    if head in SELECTABLE and cv:
        cv_set = _cv_sample(data, candidates(head, params, data.spec), cv_rows, memory_bytes, seed)
        cv = usable_folds(cv_set, cv)
    if head in SELECTABLE and cv:
        cands = candidates(head, params, data.spec)
        if len(cands) > 1:
            scores = cross_validate(cands, cv_set, data.spec, cv, seed, averaging)
            best = choose(scores)
            kind, params = best.candidate.kind, dict(best.candidate.params)
            selection = {
                "method": "stratified k-fold cross-validation over images "
                          "(all views of an image in one fold)",
                "folds": cv, "seed": seed, "metric": "accuracy over images",
                "rows": len(cv_set), "sampled": cv_set is not data.train,
                "averaged_over_views": averaging,
                "chosen": best.to_dict(),
                "candidates": [s.to_dict() for s in scores],
            }
            logger.info("chose %s: CV accuracy %.4f ± %.4f over %d folds",
                        best.candidate.label(), best.mean, best.std, cv)
    if kind == "auto":
        kind = "logreg"  # cv=0: no selection, the default kind
    if kind in ("logreg", "svm") and "layers" not in params:
        params["layers"] = _default_layers(data.spec)
    model = make_head(kind, **params)
    model.check_spec(data.spec)
    model.use_features(data.spec)
    k = len(data.class_names)
    logger.info(
        "training %s head on %d rows (%s), validating on %s (%s)",
        kind, len(data.train), views.describe(), data.validation_source,
        ", ".join(model.feature_names_ or []),
    )

    start = time.perf_counter()
    val_plain = data.validation.take(np.flatnonzero(data.validation.views == 0))
    reads_maps = model.feature_names_ == [data.spec.layer]
    streamed = (isinstance(model, DenseHead) and reads_maps
                and data.train.nbytes > min(stream_above_bytes, memory_bytes // COPIES))
    if streamed:
        from classifier.streaming import CacheBatches

        bs = int(model.get_params()["batch_size"])
        model.fit(
            CacheBatches(data.train, bs, shuffle=True, seed=seed), None,
            validation_data=(CacheBatches(val_plain, 256, shuffle=False, seed=seed), None),
        )
    fit_set = data.train
    if not streamed:
        fit_names = model.feature_names_
        fit_rows = rows_within(memory_bytes, floats_per_row(data.spec, list(fit_names or [])))
        fit_set = stratified_sample(data.train, fit_rows, seed)
        if fit_set is not data.train:
            logger.warning("the training set's features exceed the memory limit (%.1f GB): "
                           "fitting on a stratified sample of %d of its %d rows",
                           memory_bytes / 1e9, len(fit_set), len(data.train))
        X, y = fit_set.load(model.reduce, fit_names)
        Xv, yv = stratified_sample(val_plain, fit_rows, seed).load(model.reduce, fit_names)
        model.fit(X, y, validation_data=(Xv, yv))
    train_seconds = time.perf_counter() - start

    head_views = views if tta else Views()
    val_views = _cache_views(data.validation.path)
    metrics = {
        "train": _measure(model, data.train, k, data.class_names,
                          use_views(head_views, views, tta, "the training cache")),
        "validation": _measure(model, data.validation, k, data.class_names,
                               use_views(head_views, val_views, tta, "the validation cache")),
    }
    logger.info(
        "%s head: train accuracy %.4f, validation accuracy %.4f (%.1fs)",
        kind, metrics["train"]["accuracy"], metrics["validation"]["accuracy"], train_seconds,
    )
    extra: dict[str, Any] = {
        "data": {
            "train_cache": str(Path(cache_path).resolve()),
            "train_size": len(data.train),
            "train_images": len(np.unique(data.train.groups)),
            "train_class_counts": data.train.class_counts(k),
            "validation": data.validation_source,
            "validation_size": int(np.sum(data.validation.views == 0)),
            "validation_class_counts": val_plain.class_counts(k),
            "streamed": streamed,
            "fit_rows": len(fit_set),
            "fit_sampled": fit_set is not data.train,
            "memory_limit_bytes": int(memory_bytes),
        },
        "features": list(model.feature_names_ or []),
        "views": views.to_dict() if views else None,
        "tta": averaging,
        "selection": selection,
        "train_seconds": round(train_seconds, 3),
    }
    if getattr(model, "best_epoch_", None) is not None:
        extra["best_epoch"] = int(model.best_epoch_)
    detector = None
    if ood is not None:
        detector = fit_guard(model, data.train, data.spec, method=ood,
                             false_alarm_rate=false_alarm_rate, seed=seed)
    if target_accuracy is not None:
        extra["abstention"] = abstention_threshold(
            model, data.train, data.spec, target=target_accuracy, cv=cv or DEFAULT_FOLDS,
            seed=seed, averaging=averaging)
    return save_head(model, out_dir, spec=data.spec, class_names=data.class_names,
                     metrics=metrics, extra=extra, overwrite=overwrite, detector=detector)


def _cv_sample(data: TrainingData, cands: list[Candidate], cv_rows: int, memory_bytes: int,
               seed: int) -> Subset:
    """The rows cross-validation scores on: a stratified sample of at most `cv_rows` whose
    features (every candidate's) fit `memory_bytes`."""
    names = list(dict.fromkeys(n for c in cands
                               for n in make_head(c.kind, **c.params).use_features(data.spec)))
    limit = min(cv_rows, rows_within(memory_bytes, floats_per_row(data.spec, names)))
    return stratified_sample(data.train, limit, seed)


def _default_layers(spec: FeatureSpec) -> list[str]:
    """Without selection: every layer whose pooled vectors the cache holds, else its own."""
    return list(spec.pooled_layers) or [spec.layer]


def _cache_views(path: Path) -> Views:
    with open_cache(path) as cache:
        return Views.from_attrs(cache.attrs)


def _measure(model: Head, subset: Subset, k: int, class_names: list[str],
             averaged: bool) -> dict[str, Any]:
    """Metrics over images on all cache classes: the head's columns at their class index."""
    images, first = predict_images(model.predict_proba, subset, model.feature_names_ or [],
                                   averaged)
    proba = np.zeros((len(images), k))
    proba[:, model.classes_] = images
    out = classification_metrics(subset.labels[first], proba, class_names)
    out["averaged_over_views"] = averaged
    return out
