"""`featcache.load_head(...).predict` (the Python API) answers what `serve` answers for the same
image files: the same decoding, conv base and head, in another process shape. A head without
views (tests/test_entry_points_agree.py checks every entry point with a head trained on views)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import featcache

pytestmark = pytest.mark.slow


def test_python_api_predicts_what_serve_answers(
    real_client: TestClient, head_dir: Path, elpv_images: list[Path]
) -> None:
    head = featcache.load_head(head_dir)
    local = head.predict(elpv_images)
    for i, path in enumerate(elpv_images):
        r = real_client.post("/predict", files={"file": (path.name, path.read_bytes())})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["label"] == local.labels[i], path
        np.testing.assert_allclose([body["probabilities"][c] for c in local.classes],
                                   local.probabilities[i], rtol=0, atol=1e-5, err_msg=path.name)
