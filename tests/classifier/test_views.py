"""Caches with augmented views: views train, never cross the split, and are averaged over at
prediction time."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from synthetic import K, views_cache

from classifier.data import labelled_subset, training_data
from extractor import open_cache


def test_split_keeps_all_views_of_an_image_on_one_side(tmp_path: Path) -> None:
    cache = views_cache(tmp_path / "train.h5")
    data = training_data(cache, val_split=0.25, seed=0)
    with open_cache(cache) as c:
        paths, views = np.asarray(c.paths), c.views
    train_paths = set(paths[data.train.indices])
    val_paths = set(paths[data.validation.indices])
    assert not train_paths & val_paths
    # 10 held-out images, with their views (for averaging over them at prediction time)
    assert len(val_paths) == 10 and len(data.validation) == 10 * (K + 1)
    assert sorted(views[data.validation.indices].tolist()) == sorted(list(range(K + 1)) * 10)
    assert len(data.train) == 30 * (K + 1)  # every view of every training image


def test_validation_and_evaluation_caches_use_the_images_only(tmp_path: Path) -> None:
    cache = views_cache(tmp_path / "val.h5", n_per_class=5)
    subset, _, _ = labelled_subset(cache, "validation cache")
    assert len(subset) == 10
    with_views, _, _ = labelled_subset(cache, "training cache", with_views=True)
    assert len(with_views) == 10 * (K + 1)


def test_evaluate_averages_probabilities_over_views(tmp_path: Path) -> None:
    from classifier.artifact import load_head
    from classifier.evaluation import evaluate
    from classifier.metrics import classification_metrics
    from classifier.training import train

    head_dir = train(views_cache(tmp_path / "train.h5"), tmp_path / "head", cv=0,
                     val_cache=views_cache(tmp_path / "v.h5", n_per_class=8, seed=1))
    # Noisy views, so that averaging changes the answer for some images.
    test = views_cache(tmp_path / "test.h5", n_per_class=30, seed=2, noise=2.0)
    head = load_head(head_dir)
    assert head.views.count == K and head.views.mode == "dihedral"
    with open_cache(test) as c:
        feats = c.read_named(head.feature_names)
        paths, labels, views = np.asarray(c.paths), c.labels, c.views
    rows = head.predict_proba(feats)
    images = sorted(set(paths.tolist()))
    mean = np.stack([rows[paths == p].mean(axis=0) for p in images])
    own = np.stack([rows[(paths == p) & (views == 0)][0] for p in images])
    truth = np.array([labels[paths == p][0] for p in images])
    assert not np.array_equal(mean.argmax(1), own.argmax(1))  # the test can tell them apart

    averaged = evaluate(head_dir, test)
    assert averaged["views_averaged"] == K + 1 and averaged["images"] == len(images)
    want = classification_metrics(truth, mean, head.classes_)
    assert averaged["accuracy"] == want["accuracy"]
    assert averaged["roc_auc"] == pytest.approx(want["roc_auc"])
    alone = evaluate(head_dir, test, tta=False)
    assert alone["views_averaged"] == 1
    assert alone["accuracy"] == classification_metrics(truth, own, head.classes_)["accuracy"]


def test_which_views_an_evaluation_uses(caplog: pytest.LogCaptureFixture) -> None:
    from classifier.errors import DataError
    from classifier.views import Views, use_views

    dihedral = Views(7, "dihedral", 0)
    assert use_views(dihedral, Views(7, "dihedral", 3), True, "cache")  # seed: same symmetries
    assert use_views(dihedral, Views(3, "dihedral", 0), True, "cache")  # fewer: averaged too
    assert not use_views(dihedral, dihedral, False, "cache")  # --no-tta
    assert not use_views(Views(), dihedral, True, "cache")  # head trained without views
    with caplog.at_level(logging.WARNING):
        assert not use_views(dihedral, Views(), True, "cache v.h5")
    assert "--augment 7 --augment-mode dihedral" in caplog.text
    with pytest.raises(DataError, match="--augment-mode dihedral"):
        use_views(dihedral, Views(1, "flips", 0), True, "cache")
    with pytest.raises(DataError, match="--augment-seed 0"):
        use_views(Views(4, "recipe", 0), Views(4, "recipe", 1), True, "cache")


def test_old_caches_name_their_views_mode() -> None:
    from classifier.views import Views

    old = {"augment_views": 4, "augment_seed": 2, "augmentation": "rotation=40.0,..."}
    assert Views.from_attrs(old) == Views(4, "recipe", 2)
    old_dihedral = {"augment_views": 7, "augmentation": "dihedral: the 7 flips"}
    assert Views.from_attrs(old_dihedral) == Views(7, "dihedral", 0)
    assert not Views.from_attrs({})
