"""The guard and abstention served, on the real conv base and a real head: ood_score and
in_distribution in /predict, /predict/batch and V2, refusal with refuse_ood, /metrics, and
abstention through the API and the Python API."""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from classifier.artifact import load_head
from extractor import open_cache
from service.app import create_app
from service.config import Settings

pytestmark = pytest.mark.slow


def photo_crop(seed: int = 0) -> bytes:
    """A crop of one of scikit-learn's sample photos (shipped with it), as a PNG upload."""
    from sklearn.datasets import load_sample_images

    img = load_sample_images().images[seed % 2]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img[100:260, 150:310])).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def client_for(conv_base: Any, settings_for: Callable[..., Settings]
               ) -> Iterator[Callable[..., TestClient]]:
    """`client_for([head], **settings)`: a ready app on the session's real conv base."""
    clients: list[TestClient] = []

    def make(heads: list[Path], **overrides: Any) -> TestClient:
        app = create_app(settings_for(heads, **overrides), backbone_factory=lambda *_: conv_base)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the app did not become ready"
            time.sleep(0.05)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def v2_json(images: list[bytes], outputs: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [len(images)],
                        "data": [base64.b64encode(i).decode() for i in images]}],
            "outputs": [{"name": n} for n in outputs]}


def test_guard_scores_served_and_refusal(client_for: Callable[..., TestClient], head_dir: Path,
                                         elpv_images: list[Path]) -> None:
    cell, crop = elpv_images[0].read_bytes(), photo_crop()
    client = client_for([head_dir])
    ok = client.post("/predict", files={"file": ("cell.png", cell)}).json()
    assert ok["in_distribution"] is True and 0 <= ok["ood_score"] <= 1.0
    assert ok["label"] in ("defective", "functional") and ok["abstained"] is False
    odd = client.post("/predict", files={"file": ("crop.png", crop)})
    assert odd.status_code == 200  # labelled, but flagged
    assert odd.json()["in_distribution"] is False and odd.json()["ood_score"] > 1.0
    batch = client.post("/predict/batch", files=[("files", ("a.png", cell)),
                                                 ("files", ("b.png", crop))]).json()
    assert [r["in_distribution"] for r in batch["results"]] == [True, False]

    r = client.post("/v2/models/elpv-logreg/infer",
                    json=v2_json([cell, crop], ["LABEL", "OOD_SCORE", "IN_DISTRIBUTION"]))
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["IN_DISTRIBUTION"]["data"] == [True, False]
    assert outputs["IN_DISTRIBUTION"]["datatype"] == "BOOL"
    assert outputs["OOD_SCORE"]["data"][1] == pytest.approx(odd.json()["ood_score"], rel=1e-5)
    meta = client.get("/v2/models/elpv-logreg").json()
    assert {"OOD_SCORE", "IN_DISTRIBUTION"} <= {o["name"] for o in meta["outputs"]}

    metrics = client.get("/metrics").text
    assert 'featcache_ood_images_total{head="elpv-logreg",out_of_distribution="true"} 3.0' \
        in metrics
    assert 'featcache_ood_score_bucket{head="elpv-logreg",le="1.0"}' in metrics
    assert 'featcache_ood_rate{head="elpv-logreg"} 0.5' in metrics

    refusing = client_for([head_dir], refuse_ood=True)
    r = refusing.post("/predict", files={"file": ("crop.png", crop)})
    assert r.status_code == 422 and r.json()["error"]["code"] == "out_of_distribution"
    assert refusing.post("/predict", files={"file": ("cell.png", cell)}).status_code == 200
    r = refusing.post("/v2/models/elpv-logreg/infer", json=v2_json([cell, crop], ["LABEL"]))
    assert r.status_code == 400 and "IMAGE[1]" in r.json()["error"]
    assert "unlike the images" in r.json()["error"]


def test_head_without_guard_is_served_as_before(
    client_for: Callable[..., TestClient], head_dir: Path, elpv_images: list[Path],
    tmp_path: Path,
) -> None:
    old = tmp_path / "old-head"
    shutil.copytree(head_dir, old)
    meta = json.loads((old / "metadata.json").read_text())
    del meta["ood"]
    (old / "metadata.json").write_text(json.dumps(meta))
    (old / "ood.npz").unlink()
    client = client_for([old], refuse_ood=True)
    r = client.post("/predict", files={"file": ("crop.png", photo_crop())})
    assert r.status_code == 200 and r.json()["ood_score"] is None
    assert r.json()["in_distribution"] is None
    r = client.post("/v2/models/old-head/infer", json=v2_json([photo_crop()], ["OOD_SCORE"]))
    assert r.status_code == 400 and "no out-of-distribution guard" in r.json()["error"]


def test_abstention_through_the_api(client_for: Callable[..., TestClient], head_dir: Path,
                                    small_cache: Path, small_image_dir: Path,
                                    elpv_images: list[Path], tmp_path: Path,
                                    weights_path: Path) -> None:
    """A head abstaining below the median confidence of these images answers half of them."""
    head = load_head(head_dir)
    with open_cache(small_cache) as cache:
        conf = dict(zip(cache.paths, head.predict_proba(
            cache.read_named(head.feature_names)).max(axis=1), strict=True))
    threshold = float(np.median(list(conf.values())))
    abstaining = tmp_path / "abstaining"
    shutil.copytree(head_dir, abstaining)
    meta = json.loads((abstaining / "metadata.json").read_text())
    meta["abstention"] = {"threshold": threshold, "target_accuracy": 0.99, "reached": True,
                          "cv_coverage": 0.5, "cv_accuracy": 1.0, "cv_folds": 3}
    (abstaining / "metadata.json").write_text(json.dumps(meta))

    client = client_for([abstaining])
    expected = [conf[p.relative_to(small_image_dir).as_posix()] < threshold for p in elpv_images]
    assert 0 < sum(expected) < len(expected)
    served = [client.post("/predict", files={"file": (p.name, p.read_bytes())}).json()
              for p in elpv_images]
    assert [s["abstained"] for s in served] == expected
    assert all((s["label"] is None) == s["abstained"] for s in served)
    assert all(s["probabilities"] for s in served)  # probabilities still come back

    from featcache import load_head as load_classifier

    predictions = load_classifier(abstaining, weights=weights_path).predict(elpv_images)
    assert predictions.abstained == expected
    assert [label is None for label in predictions.labels] == expected
    assert predictions.in_distribution is not None and all(predictions.in_distribution)
