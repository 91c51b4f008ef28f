from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from synthetic import MakeCache, make_spec

from classifier.artifact import load_head
from classifier.errors import ArtifactError, DataError
from classifier.training import train
from extractor import SpecMismatchError, open_cache

FAST_DENSE = {"epochs": 10, "patience": 5, "learning_rate": 5e-3, "units": 16, "batch_size": 16}


@pytest.mark.parametrize("kind", ["logreg", "svm", "dense"])
def test_artifact_round_trip(kind: str, make_cache: MakeCache, tmp_path: Path) -> None:
    cache = make_cache(n_classes=3, class_names=["a", "b", "c"])
    out = train(cache, tmp_path / "heads" / kind, head=kind, val_split=0.25, seed=1,
                params=FAST_DENSE if kind == "dense" else None)
    loaded = load_head(out)
    assert loaded.name == kind
    assert loaded.classes_ == ["a", "b", "c"]
    assert loaded.spec == make_spec()
    meta = json.loads((out / "metadata.json").read_text())
    assert meta == loaded.metadata
    assert meta["spec"] == make_spec().to_dict()
    assert meta["metrics"]["validation"]["accuracy"] > 0.6
    assert meta["data"]["train_size"] + meta["data"]["validation_size"] == 90
    assert {"numpy", "scikit-learn", "keras"} <= set(meta["versions"])
    assert (out / "confusion_matrix.png").stat().st_size > 0
    assert (out / "training_curves.png").exists() == (kind == "dense")
    with open_cache(cache) as c:
        X, _ = c.read()
    from classifier.artifact import save_head  # noqa: F401  (part of the public API)

    proba = loaded.predict_proba(X)
    assert proba.shape == (90, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(load_head(out).predict_proba(X), proba, rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        loaded.predict_proba(X[:, :1])


def test_train_is_reproducible(make_cache: MakeCache, tmp_path: Path) -> None:
    cache = make_cache()
    a = load_head(train(cache, tmp_path / "a", head="svm", seed=5))
    b = load_head(train(cache, tmp_path / "b", head="svm", seed=5))
    assert a.metadata["metrics"] == b.metadata["metrics"]
    with open_cache(cache) as c:
        X, _ = c.read()
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def _rewrite_model(out: Path, obj: object) -> None:
    """Replace the model with `obj` and fix the hash, as a deliberate attacker would."""
    import skops.io as sio

    sio.dump(obj, out / "model.skops")
    meta = json.loads((out / "metadata.json").read_text())
    meta["model_sha256"] = hashlib.sha256((out / "model.skops").read_bytes()).hexdigest()
    (out / "metadata.json").write_text(json.dumps(meta))


def test_tampered_sklearn_artifact_with_untrusted_type_is_refused(
    make_cache: MakeCache, tmp_path: Path
) -> None:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    out = train(make_cache(), tmp_path / "h", head="logreg")
    evil = Pipeline([("scale", StandardScaler()), ("clf", FunctionTransformer(os.system))])
    _rewrite_model(out, evil)
    with pytest.raises(ArtifactError, match="not trusted"):
        load_head(out)


def test_tampered_sklearn_artifact_with_other_estimator_is_refused(
    make_cache: MakeCache, tmp_path: Path
) -> None:
    from sklearn.naive_bayes import GaussianNB
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    out = train(make_cache(), tmp_path / "h", head="logreg")
    other = Pipeline([("scale", StandardScaler()), ("clf", GaussianNB())])
    _rewrite_model(out, other.fit([[0.0], [1.0]], [0, 1]))
    with pytest.raises(ArtifactError, match="expected pipeline"):
        load_head(out)


def test_modified_model_file_fails_the_hash(make_cache: MakeCache, tmp_path: Path) -> None:
    out = train(make_cache(), tmp_path / "h", head="logreg")
    with open(out / "model.skops", "ab") as fh:
        fh.write(b"junk")
    with pytest.raises(ArtifactError, match="SHA-256"):
        load_head(out)


@pytest.mark.parametrize("damage", ["missing_dir", "no_metadata", "bad_json", "no_model"])
def test_missing_or_corrupt_artifact(damage: str, make_cache: MakeCache, tmp_path: Path) -> None:
    out = train(make_cache(), tmp_path / "h", head="logreg")
    if damage == "missing_dir":
        out = tmp_path / "nope"
    elif damage == "no_metadata":
        (out / "metadata.json").unlink()
    elif damage == "bad_json":
        (out / "metadata.json").write_text("{")
    else:
        (out / "model.skops").unlink()
    with pytest.raises(ArtifactError):
        load_head(out)


def test_existing_output_needs_overwrite(make_cache: MakeCache, tmp_path: Path) -> None:
    cache = make_cache()
    out = train(cache, tmp_path / "h", head="logreg")
    with pytest.raises(ArtifactError, match="already exists"):
        train(cache, out, head="logreg")
    assert train(cache, out, head="logreg", overwrite=True) == out


@pytest.mark.parametrize("content", ["unrelated_files", "broken_metadata", "a_file"])
def test_overwrite_never_removes_what_is_not_a_head(
    content: str, make_cache: MakeCache, tmp_path: Path
) -> None:
    """--force replaces a head, never a folder of other files (or a file) that happens to be
    at --out: they survive, and the error says why."""
    cache = make_cache()
    out = tmp_path / "precious"
    if content == "a_file":
        out.write_text("notes")
        kept = {out: "notes"}
    else:
        (out / "photos").mkdir(parents=True)
        kept = {out / "thesis.tex": "chapter 1", out / "photos" / "cat.jpg": "jpeg"}
        if content == "broken_metadata":
            kept[out / "metadata.json"] = '{"format": "something-else/1"}'
        for path, text in kept.items():
            path.write_text(text)
    with pytest.raises(ArtifactError, match="not a head artifact") as info:
        train(cache, out, head="logreg", overwrite=True)
    assert str(out) in str(info.value) and "refusing to replace" in str(info.value)
    assert {path: path.read_text() for path in kept} == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["precious", "train.h5"])


def test_overwrite_replaces_a_head_and_an_empty_folder(
    make_cache: MakeCache, tmp_path: Path
) -> None:
    cache = make_cache()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_head(train(cache, empty, head="logreg", overwrite=True)).kind == "logreg"
    head = train(cache, tmp_path / "h", head="logreg")
    (head / "notes.txt").write_text("stale")  # inside a head: the head's own folder, replaced
    assert load_head(train(cache, head, head="svm", overwrite=True)).kind == "svm"
    assert not (head / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "h", "train.h5"]


def test_validation_cache_made_differently_is_refused(
    make_cache: MakeCache, tmp_path: Path
) -> None:
    cache = make_cache()
    other = make_cache("val.h5", seed=1, spec=make_spec(input_size=224, layer="block4_pool"))
    with pytest.raises(SpecMismatchError, match="input_size: 150 vs 224") as info:
        train(cache, tmp_path / "h", val_cache=other)
    assert "layer" in str(info.value)


def test_validation_cache_with_other_classes_is_refused(
    make_cache: MakeCache, tmp_path: Path
) -> None:
    cache = make_cache()
    other = make_cache("val.h5", seed=1, class_names=["cats", "dogs"])
    with pytest.raises(DataError, match="class names"):
        train(cache, tmp_path / "h", val_cache=other)


def test_unlabelled_and_single_class_caches_are_refused(
    make_cache: MakeCache, tmp_path: Path
) -> None:
    unlabelled = make_cache("u.h5", class_names=[], labels=np.full(60, -1))
    with pytest.raises(DataError, match="unlabelled"):
        train(unlabelled, tmp_path / "h")
    one = make_cache("one.h5", labels=np.zeros(60, dtype=int))
    with pytest.raises(DataError, match="at least 2"):
        train(one, tmp_path / "h")


def test_dense_head_streams_large_caches(make_cache: MakeCache, tmp_path: Path) -> None:
    cache = make_cache(n_per_class=40)
    out = train(cache, tmp_path / "h", head="dense", params=FAST_DENSE, stream_above_bytes=0)
    meta = load_head(out).metadata
    assert meta["data"]["streamed"] is True
    assert meta["metrics"]["validation"]["accuracy"] > 0.8
