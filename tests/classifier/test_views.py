"""Caches with augmented views: views train, never validate, and never cross the split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from synthetic import SHAPE, make_spec, synthetic

from classifier.data import labelled_subset, training_data
from extractor import open_cache, write_cache

K = 3  # views per image


def views_cache(path: Path, n_per_class: int = 20, seed: int = 0) -> Path:
    X, y = synthetic(n_per_class, 2, seed)
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(len(y)), K + 1)
    feats = X[rows] + rng.normal(0, 0.1, size=(len(rows), *SHAPE)).astype(np.float32)
    paths = [f"c{y[i]}/{i:04d}.png" for i in rows]
    return write_cache(path, feats, y[rows], paths, make_spec(), class_names=["c0", "c1"],
                       views=np.tile(np.arange(K + 1), len(y)))


def test_split_keeps_all_views_of_an_image_on_one_side(tmp_path: Path) -> None:
    cache = views_cache(tmp_path / "train.h5")
    data = training_data(cache, val_split=0.25, seed=0)
    with open_cache(cache) as c:
        paths, views = np.asarray(c.paths), c.views
    train_paths = set(paths[data.train.indices])
    val_paths = set(paths[data.validation.indices])
    assert not train_paths & val_paths
    assert len(val_paths) == 10 and len(data.validation) == 10  # images only, no views
    assert set(views[data.validation.indices].tolist()) == {0}
    assert len(data.train) == 30 * (K + 1)  # every view of every training image


def test_validation_and_evaluation_caches_use_the_images_only(tmp_path: Path) -> None:
    cache = views_cache(tmp_path / "val.h5", n_per_class=5)
    subset, _, _ = labelled_subset(cache, "validation cache")
    assert len(subset) == 10
    with_views, _, _ = labelled_subset(cache, "training cache", with_views=True)
    assert len(with_views) == 10 * (K + 1)
