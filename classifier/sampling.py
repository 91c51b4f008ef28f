"""Bounded memory for `train-head` whatever the cache size (issue 19, item 3).

The scikit-learn heads (logreg, svm, auto) fit in memory. Two limits keep that bounded:

- cross-validation scores its settings on a stratified sample of at most `CV_ROWS` rows
  (drawn over images: all views of a sampled image come with it), and within the memory
  budget;
- the final fit uses every training row when they fit the budget, else the largest stratified
  sample that does.

The budget (`MEMORY_BYTES`, 2 GiB by default; `train-head --memory-gb`) counts the features
held (float32) times `COPIES`: the input and what the pipeline makes of it (the scaled copy,
the solver's work arrays). The head's metadata and summary state the rows used for each step.
Training metrics are measured on every training row, streamed from the cache. The dense head
streams batches from the cache already (`classifier.streaming`) and is not sampled.
"""

from __future__ import annotations

import logging

import numpy as np

from classifier.data import Subset
from extractor import FeatureSpec
from extractor.features import shape_of
from extractor.spec import parse_feature_name

logger = logging.getLogger(__name__)

#: Default memory for the features a fit holds, bytes: a few GB on a 24 GiB machine.
MEMORY_BYTES = 2 << 30
#: Rows cross-validation scores its settings on at most (24 settings x 5 folds are fitted).
CV_ROWS = 50_000
#: Copies of the input a fit may hold at once (input, scaled copy, solver arrays).
COPIES = 3


def floats_per_row(spec: FeatureSpec, names: list[str]) -> int:
    """Floats one row of these named features takes in memory (maps flattened)."""
    total = 0
    for name in names:
        layer, how = parse_feature_name(name)
        if layer == spec.layer:  # the cache's own maps, or vectors pooled from them
            shape = tuple(spec.feature_shape) if how is None else tuple(spec.feature_shape[-1:])
        else:
            shape = shape_of(name, spec.input_size)
        total += int(np.prod(shape))
    return total


def rows_within(memory_bytes: int, floats: int) -> int:
    """Rows whose features (and their COPIES) fit in `memory_bytes`."""
    return max(1, int(memory_bytes // (COPIES * 4 * max(1, floats))))


def stratified_sample(subset: Subset, max_rows: int, seed: int) -> Subset:
    """At most `max_rows` rows of `subset` (itself when it fits): images drawn at random,
    stratified by class, each with all its views; rows kept in cache order."""
    if len(subset) <= max_rows:
        return subset
    plain = np.flatnonzero(subset.views == 0)
    per_image = len(subset) / max(1, len(plain))
    n_classes = len(np.unique(subset.labels[plain]))
    images = max(n_classes, int(max_rows / per_image))
    if images >= len(plain):
        return subset
    from sklearn.model_selection import train_test_split

    try:
        chosen, _ = train_test_split(plain, train_size=images, stratify=subset.labels[plain],
                                     random_state=seed)
    except ValueError:  # a class too small to stratify: a plain random draw
        chosen = np.random.default_rng(seed).choice(plain, images, replace=False)
    rows = np.flatnonzero(np.isin(subset.groups, subset.groups[chosen]))
    return subset.take(rows)
