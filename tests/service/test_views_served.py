"""A head trained on augmented views: `serve` makes the same views of each upload and averages
over them, as `evaluate` averages over a cache's views (real weights, real images)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from classifier.artifact import load_head
from classifier.training import train
from extractor import open_cache
from extractor.runner import Options, run
from service.app import create_app

pytestmark = pytest.mark.slow

VIEWS = 7


@pytest.fixture(scope="module")
def views_cache(small_image_dir: Path, conv_base: Any, weights_path: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("views") / "dihedral.h5"
    run(Options(directory=small_image_dir, out=out, weights=str(weights_path), progress=False,
                augment=VIEWS, augment_mode="dihedral"), features_fn=conv_base)
    return out


def test_served_probabilities_average_the_same_views(  # type: ignore[no-untyped-def]
    views_cache: Path, conv_base: Any, settings_for, elpv_images: list[Path],
    small_image_dir: Path, tmp_path: Path,
) -> None:
    head_dir = train(views_cache, tmp_path / "dihedral-head", cv=0, val_split=0.25)
    head = load_head(head_dir)
    assert (head.views.count, head.views.mode) == (VIEWS, "dihedral")
    with open_cache(views_cache) as cache:
        paths = np.asarray(cache.paths)
        rows = head.predict_proba(cache.read_named(head.feature_names))

    app = create_app(settings_for([head_dir]), backbone_factory=lambda *_: conv_base)
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        for image in elpv_images[::6]:
            rel = image.relative_to(small_image_dir).as_posix()
            want = rows[paths == rel].mean(axis=0)  # the image and its 7 views, as cached
            assert (paths == rel).sum() == VIEWS + 1
            files = {"file": (image.name, image.read_bytes())}
            body = client.post("/predict", files=files).json()
            assert (body["views"], body["cached"]) == (VIEWS + 1, False)
            got = [body["probabilities"][c] for c in head.classes_]
            np.testing.assert_allclose(got, want, atol=1e-4, err_msg=rel)
            # The feature cache holds every view: the same upload runs no forward pass.
            passes = app.state.featcache.predictor.batcher.forward_passes
            again = client.post("/predict", files=files).json()
            assert again["cached"] is True and again["probabilities"] == body["probabilities"]
            assert app.state.featcache.predictor.batcher.forward_passes == passes
        alone = client.post("/predict", files={"file": ("x.png", elpv_images[0].read_bytes())})
        assert alone.json()["views"] == VIEWS + 1
