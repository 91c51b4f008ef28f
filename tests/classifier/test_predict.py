"""`predict`: one row per file, equal to the head's predictions on the folder's cache."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from featcache.predict_cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head_dir(small_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A logistic-regression head trained on the real features of `small_image_dir`."""
    from classifier.training import train

    return train(small_cache, tmp_path_factory.mktemp("heads") / "logreg", head="logreg")


def test_predict_equals_evaluate_on_the_same_images(
    head_dir: Path, small_cache: Path, small_image_dir: Path, tmp_path: Path
) -> None:
    from classifier.artifact import load_head
    from classifier.evaluation import evaluate
    from extractor import open_cache

    images = tmp_path / "images"
    shutil.copytree(small_image_dir, images)
    (images / "defective" / "zz-notes.png").write_text("not an image")
    (images / "README.txt").write_text("beside the class folders")
    cache = tmp_path / "cache.h5"
    shutil.copy(small_cache, cache)  # the folder's existing cache: only the new file is run
    out = tmp_path / "predictions.csv"
    assert main(["--head", str(head_dir), "--dir", str(images), "--cache", str(cache),
                 "--out", str(out), "--runtime", "keras", "-q"]) == 0

    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    head = load_head(head_dir)
    # The head has an out-of-distribution guard (train-head's default): its columns follow.
    assert list(rows[0]) == ["path", "label", *(f"p_{c}" for c in head.classes_), "error",
                             "ood_score", "in_distribution", "abstained"]
    by_path = {r["path"]: r for r in rows}
    assert [r["path"] for r in rows] == sorted(by_path)
    assert by_path["defective/zz-notes.png"]["error"] == "not an image (unrecognised format)"
    assert by_path["defective/zz-notes.png"]["label"] == ""
    assert "sub-folder" in by_path["README.txt"]["error"]

    with open_cache(small_cache) as c:
        feats, labels = c.read_named(head.feature_names), c.labels
        paths, names = c.paths, c.class_names
        assert head.detector is not None
        scores = head.ood_scores(c.read_named(head.detector.feature_names))
    proba = head.predict_proba(feats)
    assert scores is not None
    assert len(rows) == len(paths) + 2
    for path, p, score in zip(paths, proba, scores, strict=True):
        row = by_path[path]
        assert row["error"] == "" and row["label"] == head.classes_[int(np.argmax(p))]
        assert float(row["ood_score"]) == pytest.approx(score, rel=1e-6)
        assert row["in_distribution"] == ("true" if score <= 1.0 else "false")
        assert row["abstained"] == "false"
        got = [float(row[f"p_{c}"]) for c in head.classes_]
        np.testing.assert_allclose(got, p, rtol=0, atol=1e-12)
    truth = {p: names[y] for p, y in zip(paths, labels, strict=True)}
    accuracy = np.mean([by_path[p]["label"] == truth[p] for p in paths])
    assert accuracy == pytest.approx(evaluate(head_dir, small_cache)["accuracy"])

    # Second run: the cache is up to date, so nothing is extracted and the file is kept as is.
    before = cache.stat().st_mtime_ns
    jsonl = tmp_path / "predictions.jsonl"
    assert main(["--head", str(head_dir), "--dir", str(images), "--cache", str(cache),
                 "--out", str(jsonl), "-q"]) == 0
    assert cache.stat().st_mtime_ns == before
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [d["path"] for d in lines] == [r["path"] for r in rows]
    for d in lines:
        row = by_path[d["path"]]
        assert d["label"] == (row["label"] or None) and d["error"] == (row["error"] or None)
        if d["probabilities"] is not None:
            assert d["probabilities"] == {c: float(row[f"p_{c}"]) for c in head.classes_}


def test_predict_refuses_a_bad_out_name(head_dir: Path, small_image_dir: Path,
                                        tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--head", str(head_dir), "--dir", str(small_image_dir),
              "--out", str(tmp_path / "p.txt")])
    assert exc.value.code == 2


def test_predict_averages_over_the_views_a_head_was_trained_on(
    small_image_dir: Path, conv_base, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """A head trained on flipped views: predict extracts the same views of every file and
    averages the head's probabilities over each file's two rows; --no-tta uses the file alone."""
    from classifier.artifact import load_head
    from classifier.training import train
    from extractor import open_cache
    from extractor.runner import Options, run
    from featcache.predict_folder import default_cache

    images = tmp_path / "images"
    for cls in ("defective", "functional"):
        (images / cls).mkdir(parents=True)
        for f in sorted((small_image_dir / cls).iterdir())[:6]:
            shutil.copy(f, images / cls / f.name)
    train_cache = tmp_path / "flips.h5"
    run(Options(directory=images, out=train_cache, progress=False, augment=1,
                augment_mode="flips"), features_fn=conv_base)
    head_dir = train(train_cache, tmp_path / "head", cv=0, val_split=0.5)
    head = load_head(head_dir)
    assert (head.views.count, head.views.mode) == (1, "flips")
    with open_cache(train_cache) as c:
        paths = np.asarray(c.paths)
        rows = head.predict_proba(c.read_named(head.feature_names))
        plain = np.asarray(c.views) == 0

    out = tmp_path / "p.csv"
    assert main(["--head", str(head_dir), "--dir", str(images), "--out", str(out), "-q"]) == 0
    assert default_cache(images, head).name.endswith("-flips1.h5")
    assert default_cache(images, head).is_file()
    with open(out, newline="") as fh:
        got = {r["path"]: [float(r[f"p_{c}"]) for c in head.classes_] for r in csv.DictReader(fh)}
    alone = tmp_path / "alone.csv"
    assert main(["--head", str(head_dir), "--dir", str(images), "--out", str(alone), "--no-tta",
                 "-q"]) == 0
    with open(alone, newline="") as fh:
        got_alone = {r["path"]: [float(r[f"p_{c}"]) for c in head.classes_]
                     for r in csv.DictReader(fh)}
    assert len(got) == len(got_alone) == 12
    for path in got:
        np.testing.assert_allclose(got[path], rows[paths == path].mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(got_alone[path], rows[(paths == path) & plain][0], atol=1e-5)
