"""Training and validation sets as views on feature caches, read in chunks.

A `Subset` is a cache path plus row indices; nothing is read until asked. `load` reads the named
features a head needs chunk by chunk and applies the head's reduction to each chunk, so a
pooling head holds only its vectors and never the whole cache. Every row knows its image
(`groups`: all augmented views of one file share a group) and its view number, for
cross-validation folds that never split an image and for averaging over views.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from classifier.errors import DataError
from extractor import FeatureSpec, open_cache

logger = logging.getLogger(__name__)

CHUNK_ROWS = 1024


@dataclasses.dataclass(frozen=True)
class Subset:
    path: Path
    indices: NDArray[np.int64]
    labels: NDArray[np.int64]
    feature_shape: tuple[int, ...]
    #: Image of each row: rows of one file (its views) share the number.
    groups: NDArray[np.int64]
    #: View of each row: 0 for the image itself, 1..K for augmented views.
    views: NDArray[np.int16]

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def nbytes(self) -> int:
        """Bytes of the main maps of these rows (what a maps-reading head holds)."""
        return 4 * len(self) * int(np.prod(self.feature_shape))

    def take(self, rows: NDArray[np.integer] | slice) -> Subset:
        """The subset of these rows (positions in this subset, not cache rows)."""
        return Subset(self.path, self.indices[rows], self.labels[rows], self.feature_shape,
                      self.groups[rows], self.views[rows])

    def load(
        self,
        reduce: Callable[[Any], NDArray[np.float32]] | None = None,
        names: Sequence[str] | None = None,
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """(X, y) in memory, each chunk passed through `reduce` as soon as it is read.

        With `names`, chunks are mappings of those named features (`FeatureCache.iter_named`);
        without, arrays of the main maps.
        """
        parts: list[Any] = []
        with open_cache(self.path) as cache:
            chunks: Iterable[tuple[Any, Any]] = (
                cache.iter_named(names, CHUNK_ROWS, self.indices) if names is not None
                else cache.iter_batches(CHUNK_ROWS, self.indices)
            )
            for feats, _ in chunks:
                parts.append(reduce(feats) if reduce is not None else feats)
        if not parts:
            if names is not None and reduce is None:
                with open_cache(self.path) as cache:
                    return cache.read_named(names, self.indices[:0]), self.labels  # type: ignore[return-value]
            return np.zeros((0, *self.feature_shape), np.float32), self.labels
        if isinstance(parts[0], dict):
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, self.labels  # type: ignore[return-value]
        return np.concatenate(parts), self.labels

    def class_counts(self, n_classes: int) -> list[int]:
        return np.bincount(self.labels, minlength=n_classes).astype(int).tolist()


@dataclasses.dataclass(frozen=True)
class TrainingData:
    train: Subset
    validation: Subset
    spec: FeatureSpec
    class_names: list[str]
    #: How the validation set was obtained, for the metadata.
    validation_source: dict[str, object]


def labelled_subset(
    path: str | os.PathLike[str], what: str = "cache", with_views: bool = False
) -> tuple[Subset, FeatureSpec, list[str]]:
    """The labelled rows of a cache; refuses unlabelled caches and ones with < 2 classes.

    Only each image's own row unless `with_views`: augmented views (`extract --augment`) are
    for training; validation, evaluation and prediction use the images as they are.
    """
    path = Path(path)
    with open_cache(path) as cache:
        spec = cache.spec
        names = cache.class_names
        labels = cache.labels.astype(np.int64)
        views = cache.views
        _, groups = np.unique(np.asarray(cache.paths, dtype=object), return_inverse=True)
        if not with_views:
            labels[views != 0] = -2  # left out below, and not counted as unlabelled
    if not names or not (labels >= 0).any():
        raise DataError(
            f"{what} {path} is unlabelled (extracted from a folder without class sub-folders); "
            "a head needs labelled features"
        )
    keep = np.flatnonzero(labels >= 0)
    if (labels == -1).any():
        logger.warning("%s: ignoring %d unlabelled rows", path, int((labels == -1).sum()))
    present = np.unique(labels[keep])
    if len(present) < 2:
        raise DataError(
            f"{what} {path} holds {len(present)} class ({', '.join(names[i] for i in present)}); "
            "a classifier needs at least 2"
        )
    subset = Subset(path, keep, labels[keep], tuple(spec.feature_shape),
                    np.asarray(groups, np.int64)[keep], views[keep])
    return subset, spec, names


def check_same_classes(ours: Sequence[str], theirs: Sequence[str], what: str, against: str) -> None:
    if list(ours) != list(theirs):
        raise DataError(
            f"{what} has classes {list(theirs)} but {against} has {list(ours)}; class names "
            "(and their order) must match"
        )


def training_data(
    cache: str | os.PathLike[str],
    val_cache: str | os.PathLike[str] | None = None,
    val_split: float = 0.2,
    seed: int = 0,
) -> TrainingData:
    """The training set and its validation set: another cache, or a stratified, seeded split.

    Both include augmented views when their caches have them (validation's are for averaging
    over views; `classifier.views` decides whether they are used). A split is drawn over
    images, never rows: all views of an image land on the same side, so no view of a
    validation image is ever trained on.
    """
    full, spec, names = labelled_subset(cache, "training cache", with_views=True)
    if val_cache is not None:
        val, val_spec, val_names = labelled_subset(val_cache, "validation cache", with_views=True)
        spec.check_compatible(val_spec, what=f"validation cache {val.path}",
                              against=f"training cache {full.path}")
        check_same_classes(names, val_names, f"validation cache {val.path}",
                           f"training cache {full.path}")
        return TrainingData(full, val, spec, names, {"cache": str(val.path)})
    if not 0 < val_split < 1:
        raise DataError(f"val_split must be between 0 and 1 (exclusive); got {val_split!r}")
    from sklearn.model_selection import train_test_split

    plain = np.flatnonzero(full.views == 0)
    try:
        tr_plain, va_plain = train_test_split(
            plain, test_size=val_split, stratify=full.labels[plain], random_state=seed
        )
    except ValueError as exc:
        raise DataError(
            f"cannot hold out val_split={val_split} of {len(full)} rows stratified by class "
            f"({exc}); pass a validation cache or change the split"
        ) from None
    tr = np.flatnonzero(np.isin(full.groups, full.groups[tr_plain]))
    va = np.flatnonzero(np.isin(full.groups, full.groups[va_plain]))
    return TrainingData(
        full.take(tr), full.take(va), spec, names, {"split": float(val_split), "seed": int(seed)}
    )
