"""POST /predict?explain=true and /predict/batch?explain=true: the heatmap beside the answer."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import featcache


def _grid(body: dict) -> np.ndarray:  # type: ignore[type-arg]
    explanation = body["explanation"]
    assert set(explanation) == {"grid", "overlay_png"}
    png = Image.open(io.BytesIO(base64.b64decode(explanation["overlay_png"])))
    assert png.format == "PNG" and png.size == (150, 150) and png.mode == "RGB"
    return np.asarray(explanation["grid"], dtype=np.float64)


@pytest.mark.slow
def test_predict_explain_matches_the_python_api(
    real_client: TestClient, head_dir: Path, second_head_dir: Path, elpv_images: list[Path],
) -> None:
    """Explained and plain answers agree (the explained request's features are cached: the
    plain one after it hits); the grid is the Python API's (to 4 significant digits), for the
    logreg head (three layers' vectors) and the svm head (rbf kernel)."""
    for head, path in ((head_dir, elpv_images[0]), (second_head_dir, elpv_images[-1])):
        # Bytes no other test uploads (a trailing byte PNG decoders ignore).
        files = {"file": (path.name, path.read_bytes() + b"explain")}
        explained = real_client.post(f"/predict?head={head.name}&explain=true", files=files)
        plain = real_client.post(f"/predict?head={head.name}", files=files)
        assert plain.status_code == 200 and explained.status_code == 200, explained.text
        assert plain.json()["explanation"] is None
        assert explained.json()["cached"] is False and plain.json()["cached"] is True
        body = explained.json()
        assert body["label"] == plain.json()["label"]
        for c, p in plain.json()["probabilities"].items():
            assert body["probabilities"][c] == pytest.approx(p, abs=1e-5)
        assert body["timings_ms"]["explain"] > 0
        grid = _grid(body)
        assert grid.shape == (150, 150)
        want = featcache.load_head(head).explain(path)
        assert want.label == body["label"]
        np.testing.assert_allclose(grid, want.grid, atol=1e-3 * np.abs(want.grid).max())


@pytest.mark.slow
def test_batch_explain(real_client: TestClient, head_dir: Path,
                       elpv_images: list[Path]) -> None:
    files = [("files", (p.name, p.read_bytes())) for p in elpv_images[:2]]
    files.append(("files", ("notes.txt", b"not an image")))
    r = real_client.post(f"/predict/batch?head={head_dir.name}&explain=true",
                         files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["succeeded"] == 2 and body["failed"] == 1
    grids = [_grid(item) for item in body["results"][:2]]
    assert grids[0].shape == (150, 150) and not np.allclose(grids[0], grids[1])
    assert body["results"][2]["error"]["code"] == "invalid_image"
    assert body["results"][2]["explanation"] is None


def test_explain_needs_a_conv_base_with_maps(fake_app) -> None:  # type: ignore[no-untyped-def]
    """A conv base that gives only named features (here a fake) cannot explain: 422."""
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(png, format="PNG")
    with fake_app() as client:
        ok = client.post("/predict", files={"file": ("a.png", png.getvalue())})
        assert ok.status_code == 200
        r = client.post("/predict?explain=true", files={"file": ("a.png", png.getvalue())})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "explain_unavailable"
