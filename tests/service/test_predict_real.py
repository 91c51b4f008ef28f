"""The real conv base and real heads in process: predictions, feature cache, /heads, /metrics."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from classifier.artifact import load_head
from classifier.evaluation import evaluate
from extractor import open_cache

pytestmark = pytest.mark.slow


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def test_predictions_match_evaluate(
    real_client: TestClient, head_dir: Path, small_cache: Path, small_image_dir: Path,
    elpv_images: list[Path],
) -> None:
    """Served probabilities equal the head's on the cached features of the same files, and the
    served labels give `evaluate`'s confusion matrix; the head reads three layers' vectors."""
    head = load_head(head_dir)
    assert {n.split("/")[0] for n in head.feature_names} == {
        "block3_pool", "block4_pool", "block5_pool"}
    with open_cache(small_cache) as cache:
        row_of = {p: i for i, p in enumerate(cache.paths)}
        features = cache.read_named(head.feature_names)
        labels = cache.labels
        names = cache.class_names
    expected = head.predict_proba(features)

    served: dict[str, dict] = {}  # type: ignore[type-arg]
    for path in elpv_images:
        r = real_client.post("/predict", files={"file": (path.name, path.read_bytes())})
        assert r.status_code == 200, r.text
        served[_rel(path, small_image_dir)] = r.json()

    assert set(served) == set(row_of)
    for rel, body in served.items():
        want = dict(zip(head.classes_, expected[row_of[rel]], strict=True))
        got = body["probabilities"]
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[c] for c in head.classes_],
                                   [want[c] for c in head.classes_], atol=1e-4, err_msg=rel)
        assert body["label"] == max(got, key=got.__getitem__)
        assert body["head"] == head.name

    report = evaluate(head_dir, small_cache)
    column = {c: i for i, c in enumerate(head.classes_)}
    k = len(head.classes_)
    confusion = np.zeros((k, k), dtype=int)
    for rel, body in served.items():
        confusion[column[names[labels[row_of[rel]]]], column[body["label"]]] += 1
    assert confusion.tolist() == report["confusion_matrix"]


def test_second_upload_is_served_from_the_cache(
    real_client: TestClient, elpv_images: list[Path]
) -> None:
    # A file no other test uploads first: its bytes made unique by a trailing PNG-ignored byte.
    data = elpv_images[0].read_bytes() + b"\0"
    first = real_client.post("/predict", files={"file": ("a.png", data)}).json()
    second = real_client.post("/predict", files={"file": ("again.png", data)}).json()
    assert first["cached"] is False and second["cached"] is True
    assert first["timings_ms"]["forward"] > 0
    assert second["timings_ms"]["forward"] == 0
    assert second["probabilities"] == first["probabilities"]
    # The cached features serve any head, without a forward pass.
    other = real_client.post("/predict?head=elpv-svm", files={"file": ("b.png", data)}).json()
    assert other["cached"] is True and other["head"] == "elpv-svm"


def test_batch_matches_single(real_client: TestClient, elpv_images: list[Path]) -> None:
    picks = elpv_images[::6]
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in picks]
    files.insert(1, ("files", ("notes.txt", b"not an image", "text/plain")))
    r = real_client.post("/predict/batch", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["failed"] == 1 and body["succeeded"] == len(picks)
    results = [x for x in body["results"] if x["error"] is None]
    for p, item in zip(picks, results, strict=True):
        single = real_client.post("/predict", files={"file": (p.name, p.read_bytes())}).json()
        assert item["filename"] == p.name
        assert item["label"] == single["label"]
        np.testing.assert_allclose(list(item["probabilities"].values()),
                                   list(single["probabilities"].values()), atol=1e-5)


def test_heads_lists_metadata_and_metrics(real_client: TestClient) -> None:
    body = real_client.get("/heads").json()
    assert body["default"] == "elpv-logreg"
    assert [h["name"] for h in body["heads"]] == ["elpv-logreg", "elpv-svm"]
    first = body["heads"][0]
    assert first["default"] is True
    assert first["classes"] == ["defective", "functional"]
    assert first["spec"]["layer"] == "block5_pool"
    assert "accuracy" in first["metrics"]["validation"]
    assert first["metadata"]["kind"] == "logreg"


def test_metrics_count_requests_batches_and_cache(
    real_client: TestClient, elpv_images: list[Path]
) -> None:
    data = elpv_images[1].read_bytes() + b"\0\0"
    for _ in range(2):
        real_client.post("/predict", files={"file": ("m.png", data)})
    real_client.post("/predict", files={"file": ("bad.png", b"nope")})
    r = real_client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text

    def value(pattern: str) -> float:
        m = re.search(pattern + r" ([0-9.e+]+)$", text, re.M)
        assert m, pattern
        return float(m.group(1))

    requests = r'featcache_http_requests_total\{method="POST",route="/predict",status="%s"\}'
    assert value(requests % 200) >= 2
    assert value(requests % 422) >= 1
    latency = r'featcache_http_request_duration_seconds_count\{method="POST",route="/predict"\}'
    assert value(latency) >= 3
    assert value(r"featcache_feature_cache_hits_total") >= 1
    assert value(r"featcache_feature_cache_misses_total") >= 1
    assert value(r"featcache_feature_cache_evictions_total") >= 0
    assert value(r"featcache_forward_batch_size_count") >= 1
    assert value(r"featcache_ready") == 1


def test_docs_are_served(real_client: TestClient) -> None:
    assert real_client.get("/docs").status_code == 200
    paths = real_client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/predict/batch", "/health", "/ready", "/heads", "/metrics"} <= set(paths)
