"""Training and validation sets as views on feature caches, read in chunks.

A `Subset` is a cache path plus row indices; nothing is read until asked. `load` reads it chunk
by chunk and applies the head's reduction to each chunk, so a pooling head holds only pooled
rows (16x smaller than 4x4 maps) and never the whole cache.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

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

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def nbytes(self) -> int:
        return 4 * len(self) * int(np.prod(self.feature_shape))

    def load(
        self, reduce: Callable[[NDArray[np.float32]], NDArray[np.float32]] | None = None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """(X, y) in memory, each chunk passed through `reduce` as soon as it is read."""
        parts: list[NDArray[np.float32]] = []
        with open_cache(self.path) as cache:
            for feats, _ in cache.iter_batches(CHUNK_ROWS, self.indices):
                parts.append(reduce(feats) if reduce is not None else feats)
        if not parts:
            return np.zeros((0, *self.feature_shape), np.float32), self.labels
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


def labelled_subset(path: str | os.PathLike[str], what: str = "cache") -> tuple[
    Subset, FeatureSpec, list[str]
]:
    """All labelled rows of a cache; refuses unlabelled caches and ones with < 2 classes."""
    path = Path(path)
    with open_cache(path) as cache:
        spec = cache.spec
        names = cache.class_names
        labels = cache.labels.astype(np.int64)
    if not names or not (labels >= 0).any():
        raise DataError(
            f"{what} {path} is unlabelled (extracted from a folder without class sub-folders); "
            "a head needs labelled features"
        )
    keep = np.flatnonzero(labels >= 0)
    if len(keep) < len(labels):
        logger.warning("%s: ignoring %d unlabelled rows", path, len(labels) - len(keep))
    present = np.unique(labels[keep])
    if len(present) < 2:
        raise DataError(
            f"{what} {path} holds {len(present)} class ({', '.join(names[i] for i in present)}); "
            "a classifier needs at least 2"
        )
    return Subset(path, keep, labels[keep], tuple(spec.feature_shape)), spec, names


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
    """The training set and its validation set: another cache, or a stratified, seeded split."""
    full, spec, names = labelled_subset(cache, "training cache")
    if val_cache is not None:
        val, val_spec, val_names = labelled_subset(val_cache, "validation cache")
        spec.check_compatible(val_spec, what=f"validation cache {val.path}",
                              against=f"training cache {full.path}")
        check_same_classes(names, val_names, f"validation cache {val.path}",
                           f"training cache {full.path}")
        return TrainingData(full, val, spec, names, {"cache": str(val.path)})
    if not 0 < val_split < 1:
        raise DataError(f"val_split must be between 0 and 1 (exclusive); got {val_split!r}")
    from sklearn.model_selection import train_test_split

    try:
        tr, va = train_test_split(
            np.arange(len(full)), test_size=val_split, stratify=full.labels, random_state=seed
        )
    except ValueError as exc:
        raise DataError(
            f"cannot hold out val_split={val_split} of {len(full)} rows stratified by class "
            f"({exc}); pass a validation cache or change the split"
        ) from None
    tr, va = np.sort(tr), np.sort(va)

    def part(rows: NDArray[np.int64]) -> Subset:
        return Subset(full.path, full.indices[rows], full.labels[rows], full.feature_shape)

    return TrainingData(
        part(tr), part(va), spec, names, {"split": float(val_split), "seed": int(seed)}
    )
