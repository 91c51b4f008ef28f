"""The Python API on real weights and real ELPV images: extract -> train_head -> load_head ->
predict gives the probabilities evaluate and predict compute from the cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featcache
from classifier.predict import predict_cache

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(small_image_dir: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[featcache.ImageClassifier, Path]:
    work = tmp_path_factory.mktemp("api")
    summary = featcache.extract(small_image_dir, work / "train.h5")
    assert summary.total == 24 and summary.extracted == 24 and not summary.skipped
    head = featcache.train_head(work / "train.h5", work / "head", cv=3)
    return head, work / "train.h5"


def _cache_probabilities(head: featcache.ImageClassifier, cache: Path, paths: list[str]
                         ) -> np.ndarray:
    with featcache.open_cache(cache) as c:
        rows = [c.paths.index(p) for p in paths]
        return head.head.predict_proba(c.read_named(head.head.feature_names, rows))


def test_predict_equals_the_cache_and_evaluate(
    trained: tuple[featcache.ImageClassifier, Path], small_image_dir: Path
) -> None:
    head, cache = trained
    assert isinstance(head, featcache.ImageClassifier) and head.kind == "logreg"
    assert head.metadata["selection"]["folds"] == 3
    rel = sorted(str(p.relative_to(small_image_dir)) for p in small_image_dir.rglob("*.png"))
    result = head.predict([small_image_dir / p for p in rel])
    expected = _cache_probabilities(head, cache, rel)
    np.testing.assert_allclose(result.probabilities, expected, rtol=0, atol=1e-5)
    assert result.labels == [head.classes_[i] for i in np.argmax(expected, axis=1)]
    assert result.classes == head.classes_ == ["defective", "functional"]
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-12)

    truth = [p.split("/")[0] for p in rel]
    metrics = featcache.evaluate(head, cache)
    assert metrics["accuracy"] == pytest.approx(np.mean(np.array(result.labels) == truth))
    assert featcache.evaluate(head.path, cache)["accuracy"] == metrics["accuracy"]


def test_bytes_pil_images_and_arrays_give_what_files_give(
    trained: tuple[featcache.ImageClassifier, Path], small_image_dir: Path
) -> None:
    head, _ = trained
    files = sorted(small_image_dir.rglob("*.png"))[:3]
    by_file = head.predict_proba(files)
    as_bytes = head.predict_proba([f.read_bytes() for f in files])
    as_pil = head.predict_proba([Image.open(f) for f in files])
    as_rgb = head.predict_proba(np.stack([np.asarray(Image.open(f).convert("RGB"))
                                          for f in files]))
    for other in (as_bytes, as_pil, as_rgb):
        np.testing.assert_allclose(other, by_file, rtol=0, atol=1e-5)
    one = head.predict(files[0])  # one image alone: still one row
    assert len(one) == 1 and one.labels[0] == head.predict(files).labels[0]
    assert head.predict([]).probabilities.shape == (0, 2)


def test_bad_images_are_named(trained: tuple[featcache.ImageClassifier, Path],
                              tmp_path: Path, small_image_dir: Path) -> None:
    head, _ = trained
    good = sorted(small_image_dir.rglob("*.png"))[0]
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"images\[1\] \(.*notes.png\): not an image"):
        head.predict([good, tmp_path / "notes.png"])
    with pytest.raises(ValueError, match=r"images\[0\]: arrays must be uint8"):
        head.predict(np.zeros((50, 50, 3), np.float32))
    with pytest.raises(TypeError, match=r"images\[0\]: expected a path"):
        head.predict([42])


def test_load_head_refuses_other_weights(trained: tuple[featcache.ImageClassifier, Path],
                                         tmp_path: Path, small_image_dir: Path,
                                         weights_path: Path) -> None:
    head, _ = trained
    other = tmp_path / "other.h5"
    shutil.copy(weights_path, other)
    with open(other, "r+b") as fh:  # same file but one byte: other weights
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    image = sorted(small_image_dir.rglob("*.png"))[0]
    with pytest.raises(ValueError, match="weights_sha256"):
        featcache.load_head(head.path, weights=other).predict(image)


def test_unknown_extract_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unknown options colour"):
        featcache.extract(tmp_path, tmp_path / "x.h5", colour="red")


def test_a_head_with_views_averages_over_the_same_views(
    small_image_dir: Path, tmp_path: Path
) -> None:
    """Recipe views are random per image, keyed by its bytes: predict must make the very views
    extract made, and average as evaluate and `predict` do."""
    images = tmp_path / "images"
    for cls in ("defective", "functional"):
        (images / cls).mkdir(parents=True)
        for src in sorted((small_image_dir / cls).iterdir())[:4]:
            shutil.copy(src, images / cls / src.name)
    featcache.extract(images, tmp_path / "views.h5", augment=2, augment_seed=7)
    head = featcache.train_head(tmp_path / "views.h5", tmp_path / "head", cv=0,
                                val_split=0.25)
    assert head.views.count == 2 and head.views.seed == 7

    files = sorted(images.rglob("*.png"))
    averaged = head.predict(files)
    by_command = predict_cache(head.head, tmp_path / "views.h5", images)
    np.testing.assert_allclose(averaged.probabilities,
                               [p.probabilities for p in by_command], rtol=0, atol=1e-5)
    alone = featcache.load_head(head.path, tta=False).predict(files)
    assert np.abs(alone.probabilities - averaged.probabilities).max() > 1e-4
