"""Settings chosen by cross-validation on the training cache, never on validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from synthetic import K, MakeCache, make_spec, synthetic, views_cache

from classifier.data import labelled_subset
from classifier.selection import LOGREG_C, candidates, folds
from classifier.training import train
from extractor import write_cache


def test_folds_never_split_an_images_views(tmp_path: Path) -> None:
    subset, _, _ = labelled_subset(views_cache(tmp_path / "t.h5"), with_views=True)
    splits = folds(subset, 5, seed=0)
    held_out = np.concatenate([te for _, te in splits])
    assert sorted(held_out.tolist()) == list(range(len(subset)))  # every row held out once
    for tr, te in splits:
        assert not set(subset.groups[tr]) & set(subset.groups[te])
        for group in set(subset.groups[te].tolist()):  # all K+1 views of a held-out image
            assert int(np.sum(subset.groups[te] == group)) == K + 1
        # stratified: both classes in every held-out fold
        assert set(subset.labels[te].tolist()) == {0, 1}


def test_files_with_equal_bytes_share_a_fold(tmp_path: Path) -> None:
    """Copies of one image under two names are held out together, never trained on and scored."""
    X, y = synthetic(10, 2, seed=0)
    paths = [f"c{y[i]}/{i:02d}.png" for i in range(len(y))]
    sha = [f"{i:064x}" for i in range(len(y))]
    for copy, original in ((1, 0), (11, 10), (5, 3)):  # same class, same bytes
        sha[copy] = sha[original]
    cache = write_cache(tmp_path / "c.h5", X, y, paths, make_spec(), class_names=["c0", "c1"],
                        sha256=sha)
    subset, _, _ = labelled_subset(cache)
    for tr, te in folds(subset, 3, seed=0):
        held = {sha[i] for i in subset.indices[te]}
        trained = {sha[i] for i in subset.indices[tr]}
        assert not held & trained


def test_fewer_images_than_folds_means_fewer_folds(
    make_cache: MakeCache, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """3 training images a class (4, one held out): 3 folds, said in the log and metadata."""
    with caplog.at_level("WARNING"):
        head = train(make_cache(n_per_class=4), tmp_path / "h", cv=5, val_split=0.25)
    assert json.loads((head / "metadata.json").read_text())["selection"]["folds"] == 3
    assert "only 3 training images" in caplog.text
    with caplog.at_level("WARNING"):
        single = train(make_cache(n_per_class=2), tmp_path / "h1", cv=5, val_split=0.5)
    assert json.loads((single / "metadata.json").read_text())["selection"] is None


def test_choice_never_depends_on_the_validation_cache(make_cache: MakeCache,
                                                      tmp_path: Path) -> None:
    cache = make_cache("train.h5", n_per_class=25, seed=0)
    heads = []
    flipped = 1 - np.repeat(np.arange(2), 10)  # a validation set that disagrees entirely
    for seed, labels in ((1, None), (2, flipped)):
        val = make_cache(f"val{seed}.h5", n_per_class=10, seed=seed, labels=labels)
        heads.append(train(cache, tmp_path / f"head{seed}", val_cache=val))
    meta = [json.loads((h / "metadata.json").read_text()) for h in heads]
    assert meta[0]["selection"] == meta[1]["selection"]
    assert meta[0]["params"] == meta[1]["params"]
    accuracy = [m["metrics"]["validation"]["accuracy"] for m in meta]
    assert accuracy[0] > 0.9 and accuracy[1] < 0.1


def test_selection_is_recorded(make_cache: MakeCache, tmp_path: Path) -> None:
    head = train(make_cache(n_per_class=25), tmp_path / "head", val_split=0.2, cv=4)
    meta = json.loads((head / "metadata.json").read_text())
    sel = meta["selection"]
    assert sel["folds"] == 4 and sel["metric"] == "accuracy over images"
    assert [c["params"]["C"] for c in sel["candidates"]] == list(LOGREG_C)
    best = max(sel["candidates"], key=lambda c: c["cv_accuracy_mean"])
    assert sel["chosen"]["cv_accuracy_mean"] == best["cv_accuracy_mean"]
    assert meta["params"]["C"] == sel["chosen"]["params"]["C"]
    assert all(len(c["cv_accuracy_folds"]) == 4 for c in sel["candidates"])
    assert meta["features"] == ["block5_pool/avg", "block5_pool/max"]


def test_given_settings_are_not_searched(make_cache: MakeCache, tmp_path: Path) -> None:
    head = train(make_cache(), tmp_path / "h", params={"C": 0.5})
    assert json.loads((head / "metadata.json").read_text())["selection"] is None
    skipped = train(make_cache(), tmp_path / "h0", cv=0)
    meta = json.loads((skipped / "metadata.json").read_text())
    assert meta["selection"] is None and meta["params"]["C"] == 0.03


def test_candidates_only_name_layers_the_cache_holds() -> None:
    three = make_spec(pooled_layers=("block3_pool", "block4_pool", "block5_pool"))
    sets = {c.params["layers"] for c in candidates("logreg", {}, three)}
    assert ("block3_pool", "block4_pool", "block5_pool") in sets and ("block5_pool",) in sets
    plain = make_spec()  # maps of block5_pool only: its pooled vectors are derived
    assert {c.params["layers"] for c in candidates("logreg", {}, plain)} == {("block5_pool",)}
    auto = candidates("auto", {}, plain)
    assert {c.kind for c in auto} == {"logreg", "svm"}


def test_auto_picks_a_kind_by_cross_validation(make_cache: MakeCache, tmp_path: Path) -> None:
    head = train(make_cache(n_per_class=20), tmp_path / "auto", head="auto", cv=3)
    meta = json.loads((head / "metadata.json").read_text())
    assert meta["kind"] == meta["selection"]["chosen"]["kind"]
    assert {c["kind"] for c in meta["selection"]["candidates"]} == {"logreg", "svm"}


def test_heads_are_scikit_learn_estimators() -> None:
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score

    from classifier.heads import LogRegHead
    from classifier.pooling import pool

    X, y = synthetic(20, 2, seed=0)
    head = LogRegHead(C=0.5, layers=["block5_pool"])
    twin = clone(head)
    assert twin.get_params() == head.get_params() and twin is not head
    vectors = pool(X, "avgmax")  # 2-D: the head's input vectors
    scores = cross_val_score(head, vectors, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.9
    assert head.set_params(C=2.0).C == 2.0
