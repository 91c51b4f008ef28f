"""Heatmaps (`classifier.explain`): the gradients are right, the geometry is right, views map
back, and on real weights the heatmap points at the pattern that decides the class; the
`featcache explain` command and `load_head(...).explain(image)`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from patterns import CLASSES, PATTERN, hits, write_set
from PIL import Image

from classifier.explain import (
    GRAD_CAM,
    GRADIENT_X_ACTIVATION,
    contributions,
    sklearn_gradient,
    to_image,
)
from classifier.heads import LogRegHead, SVMHead
from classifier.views import Views
from extractor.augment import make_view, unmake_view

LAYERS = ["block3_pool", "block4_pool", "block5_pool"]


def _maps(rng: np.random.Generator, n: int, h: int = 3, c: int = 6) -> np.ndarray:
    """Post-ReLU-like maps: many exact zeros, heavy tails."""
    return np.maximum(rng.normal(0, 1, (n, h, h, c)), 0).astype(np.float32) ** 2


def _fit(head: LogRegHead | SVMHead, maps: np.ndarray, y: np.ndarray) -> LogRegHead | SVMHead:
    head.feature_names_ = [f"block5_pool/{p}" for p in
                           (("avg", "max") if head.pooling == "avgmax" else (head.pooling,))]
    return head.fit({f"block5_pool/{p}": maps.mean(axis=(1, 2)) if p == "avg"
                     else maps.max(axis=(1, 2)) for p in ("avg", "max")}, y)


def _labels(maps: np.ndarray) -> np.ndarray:
    return (maps[..., 0].mean(axis=(1, 2)) > np.median(maps[..., 0].mean(axis=(1, 2)))).astype(int)


def test_linear_head_on_average_pooling_adds_up_to_its_score() -> None:
    """Exact for average pooling: the contributions sum to the logit less what no location
    makes (the intercept and the scaler's offset), and negate for the other class."""
    rng = np.random.default_rng(0)
    maps = _maps(rng, 60)
    head = _fit(LogRegHead(pooling="avg", scaling="standard", C=1.0), maps, _labels(maps))
    scaler, clf = head.pipeline_.steps[0][1], head.pipeline_.steps[1][1]
    offset = clf.intercept_[0] - (clf.coef_[0] * scaler.mean_ / scaler.scale_).sum()
    for a in maps[:5]:
        logit = head.pipeline_.decision_function(a.mean(axis=(0, 1))[None])[0]
        cells, method = contributions(head, head.feature_names_, {"block5_pool": a}, 1)
        assert method == GRADIENT_X_ACTIVATION
        assert cells["block5_pool"].shape == (3, 3)
        np.testing.assert_allclose(cells["block5_pool"].sum(), logit - offset, rtol=1e-5)
        other, _ = contributions(head, head.feature_names_, {"block5_pool": a}, 0)
        np.testing.assert_allclose(other["block5_pool"], -cells["block5_pool"])


@pytest.mark.parametrize("make", [
    lambda: LogRegHead(pooling="avgmax", scaling="sqrt", C=1.0),
    lambda: LogRegHead(pooling="avg", scaling="l2", C=1.0),
    lambda: SVMHead(pooling="avgmax", scaling="sqrt", C=1.0),
    lambda: SVMHead(pooling="avg", scaling="standard", C=1.0, kernel="linear"),
], ids=["logreg-sqrt", "logreg-l2", "svm-rbf-sqrt", "svm-linear"])
def test_gradient_through_scaling_and_head_matches_finite_differences(make) -> None:
    """The chain rule through the square root, standardisation or l2 normalisation, and the
    head (logistic coefficients, the rbf kernel expansion), against the pipeline itself."""
    rng = np.random.default_rng(1)
    maps = _maps(rng, 80) + 0.05  # away from the root's kink at 0
    head = _fit(make(), maps, _labels(maps))

    def score(v: np.ndarray) -> float:
        u = np.sqrt(v) if head.scaling == "sqrt" else v
        z = head.pipeline_.steps[0][1].transform(u[None])
        clf = head.pipeline_.steps[1][1]
        if hasattr(clf, "calibrated_classifiers_"):
            # Monotone in the calibrated probability of the second class.
            cal = clf.calibrated_classifiers_[0]
            f = cal.estimator.decision_function(z)[0]
            return float(-np.sign(cal.calibrators[0].a_) * f)
        return float(clf.decision_function(z)[0])

    a = maps[3]
    v = np.concatenate([a.mean(axis=(0, 1)), a.max(axis=(0, 1))]) if head.pooling == "avgmax" \
        else a.mean(axis=(0, 1))
    v = v.astype(np.float64)
    g = sklearn_gradient(head, v, 1)
    eps = 1e-5
    numeric = np.array([(score(v + eps * e) - score(v - eps * e)) / (2 * eps)
                        for e in np.eye(len(v))])
    np.testing.assert_allclose(g, numeric, rtol=1e-3, atol=1e-6)


def test_max_pooling_gives_each_channel_to_its_argmax() -> None:
    rng = np.random.default_rng(2)
    maps = _maps(rng, 60)
    head = _fit(LogRegHead(pooling="max", scaling="standard", C=1.0), maps, _labels(maps))
    a = np.zeros((3, 3, 6), np.float32)
    a[2, 1, :] = 1.0  # every channel peaks at (2, 1)
    a[0, 0, :] = 0.5
    cells, _ = contributions(head, head.feature_names_, {"block5_pool": a}, 1)
    nonzero = np.argwhere(cells["block5_pool"] != 0)
    assert nonzero.tolist() == [[2, 1]]


def test_upsampling_puts_a_cell_on_the_pixels_it_covers() -> None:
    """A block5_pool cell covers 32x32 pixels (block4_pool's 16x16); the heatmap peaks there and
    keeps the layer's total (per pixel: divided by the pixels a cell spans)."""
    cells = np.zeros((4, 4))
    cells[1, 2] = 3.0
    grid = to_image({"block5_pool": cells}, 150)
    r, c = np.unravel_index(np.argmax(grid), grid.shape)
    assert 32 <= r < 64 and 64 <= c < 96
    fine = np.zeros((9, 9))
    fine[7, 0] = 1.0
    grid = to_image({"block4_pool": fine}, 150)
    r, c = np.unravel_index(np.argmax(grid), grid.shape)
    assert 112 <= r < 128 and 0 <= c < 16
    np.testing.assert_allclose(grid.sum(), 1.0, rtol=1e-9)


def test_grad_cam_on_a_keras_head() -> None:
    """Grad-CAM of the logit, not the probability: for average pooling into one sigmoid unit
    it is exactly ReLU(maps . kernel / locations), negated for the first class; a head with
    block5_conv3 (finetune) is looked at there."""
    import keras

    from classifier.explain import grad_cam

    rng = np.random.default_rng(4)
    inputs = keras.Input((4, 4, 6))
    out = keras.layers.Dense(1, activation="sigmoid", name="probability")(
        keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, out)
    maps = _maps(rng, 1, h=4)[0] * 10  # saturates the sigmoid: the logit's gradient does not
    kernel = model.layers[-1].get_weights()[0][:, 0]
    for column, sign in ((1, 1.0), (0, -1.0)):
        cam = grad_cam(model, maps, column, "block5_pool")
        np.testing.assert_allclose(cam["block5_pool"],
                                   np.maximum(sign * (maps @ kernel) / 16, 0), rtol=1e-4,
                                   atol=1e-6)

    inputs = keras.Input((9, 9, 8))
    x = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="block5_conv3")(inputs)
    x = keras.layers.Dense(3, activation="relu")(keras.layers.Flatten()(
        keras.layers.MaxPooling2D()(x)))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    cam = grad_cam(model, _maps(rng, 1, h=9, c=8)[0], 2, "block4_pool")
    assert list(cam) == ["block5_conv3"] and cam["block5_conv3"].shape == (9, 9)
    assert (cam["block5_conv3"] >= 0).all()
    assert to_image(cam, 150).shape == (150, 150)


@pytest.mark.parametrize("mode,views", [("flips", 1), ("dihedral", 7), ("recipe", 3)])
def test_unmake_view_undoes_make_view(mode: str, views: int) -> None:
    """A heatmap drawn on a view, mapped back, lies where the view took those pixels from."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    smooth = ndimage.gaussian_filter(rng.normal(0, 1, (64, 64)), 3)
    plane = (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255
    img = np.repeat(plane.round().astype(np.uint8)[..., None], 3, axis=2)
    for v in range(1, views + 1):
        seen = make_view(img, "ab" * 32, v, 5, mode).astype(np.float32)[..., 0]
        back, weight = unmake_view(seen, "ab" * 32, v, 5, mode)
        inside = weight > 0.999
        if mode == "recipe":  # interpolated twice; compare away from the edges
            inside[:8], inside[-8:], inside[:, :8], inside[:, -8:] = False, False, False, False
            assert inside.mean() > 0.2
            truth = img[..., 0][inside].astype(np.float32)
            err = np.abs(back[inside] - truth).mean()
            assert err < 4 and err < 0.2 * np.abs(seen[inside] - truth).mean()
        else:
            assert inside.all()
            np.testing.assert_array_equal(back, img[..., 0].astype(np.float32))


# ----------------------------------------------------------------- real weights: pointing game

@pytest.fixture(scope="module")
def pattern_set(conv_base, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """24 training and 20 validation images per class of the synthetic pattern set, extracted
    with the real weights, and a logreg and a dense (Keras) head trained on them, both on the
    pooled vectors of block3-5."""
    from classifier.training import train
    from extractor.runner import Options, run

    root = tmp_path_factory.mktemp("patterns")
    write_set(root / "train", 24, seed=0)
    places = write_set(root / "val", 20, seed=1)
    for split in ("train", "val"):
        run(Options(directory=root / split, out=root / f"{split}.h5",
                    weights=str(conv_base.weights_path), progress=False), features_fn=conv_base)
    logreg = train(root / "train.h5", root / "logreg", head="logreg", val_cache=root / "val.h5",
                   params={"layers": LAYERS, "C": 0.03})
    dense = train(root / "train.h5", root / "dense", head="dense", val_cache=root / "val.h5",
                  params={"layers": LAYERS, "pooling": "avgmax", "epochs": 60, "patience": 10})
    return {"root": root, "places": places, "logreg": logreg, "dense": dense}


@pytest.mark.slow
@pytest.mark.parametrize("kind,method", [("logreg", GRADIENT_X_ACTIVATION), ("dense", GRAD_CAM)])
def test_pointing_game(pattern_set: dict, kind: str, method: str) -> None:
    """The heatmap's peak falls on the class's pattern (within 15 pixels, the pointing game's
    usual tolerance) in at least 90% of the validation images."""
    import featcache

    clf = featcache.load_head(pattern_set[kind])
    places: dict[str, tuple[int, int]] = pattern_set["places"]  # type: ignore[assignment]
    scored = []
    for rel, place in places.items():
        e = clf.explain(pattern_set["root"] / "val" / rel)
        assert e.method == method and e.grid.shape == (150, 150)
        assert e.label in CLASSES
        scored.append(hits(e.grid, place))
    # The pattern is a small part of the image: pointing at random would hit ~10% of the time.
    assert (PATTERN + 30) ** 2 / 150**2 < 0.2
    assert np.mean(scored) >= 0.9, f"{kind}: pointing game {np.mean(scored):.2f}"


@pytest.mark.slow
def test_views_are_mapped_back_and_averaged(pattern_set: dict, tmp_path: Path) -> None:
    """With flips views, the heatmap is the mean of the image's and of the mirror image's,
    mirrored back: the mirror image explained on its own, flipped, gives the same numbers."""
    import featcache

    path = pattern_set["root"] / "val" / next(iter(pattern_set["places"]))
    plain = featcache.load_head(pattern_set["logreg"], tta=False)
    with_views = featcache.load_head(pattern_set["logreg"])
    with_views.views = Views(1, "flips", 0)
    image = plain.explain(path)
    mirror = plain.explain(np.ascontiguousarray(image.pixels[:, ::-1]))
    assert mirror.label == image.label
    both = with_views.explain(path)
    np.testing.assert_allclose(both.grid, (image.grid + mirror.grid[:, ::-1]) / 2,
                               rtol=1e-4, atol=1e-6 * np.abs(image.grid).max())
    assert not np.allclose(image.grid, mirror.grid, atol=1e-6 * np.abs(image.grid).max())


@pytest.mark.slow
def test_python_api_explain(pattern_set: dict) -> None:
    import featcache

    clf = featcache.load_head(pattern_set["logreg"])
    rel = next(iter(pattern_set["places"]))
    path = pattern_set["root"] / "val" / rel
    e = clf.explain(path)
    assert e.label == clf.predict(path).labels[0]
    assert e.grid.dtype == np.float32 and e.grid.shape == (150, 150)
    png = Image.open(io.BytesIO(e.overlay_png()))
    assert png.size == (150, 150) and e.overlay.mode == "RGB"
    body = e.to_json()
    assert len(body["grid"]) == 150 and len(body["grid"][0]) == 150
    np.testing.assert_allclose(body["grid"], e.grid, atol=1e-3 * np.abs(e.grid).max())
    # Bytes and the decoded pixels explain alike (pixels as given, encoded losslessly).
    again = clf.explain(path.read_bytes())
    np.testing.assert_array_equal(again.grid, e.grid)


@pytest.mark.slow
def test_explain_command(pattern_set: dict, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    from featcache import cli

    rels = list(pattern_set["places"])[:2]
    images = [str(pattern_set["root"] / "val" / r) for r in rels]  # checker/0000, checker/0001
    out = tmp_path / "heatmaps"
    assert cli.main(["explain", "--head", str(pattern_set["logreg"]), *images, "--out", str(out),
                     "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["explained"] == 2 and summary["errors"] == []
    for item, image in zip(summary["images"], images, strict=True):
        assert item["image"] == image and item["method"] == GRADIENT_X_ACTIVATION
        grid = np.load(item["grid"])
        assert grid.shape == (150, 150) and grid.dtype == np.float32
        with Image.open(item["overlay"]) as overlay:
            assert overlay.size == (150, 150)
        assert hits(grid, pattern_set["places"][rels[images.index(image)]])
    assert sorted(p.name for p in out.iterdir()) == ["0000.npy", "0000.png", "0001.npy",
                                                     "0001.png"]

    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    assert cli.main(["explain", "--head", str(pattern_set["logreg"]), images[0], str(bad),
                     "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "1 explained, 1 errors" in captured.out and "notes.txt" in captured.err
