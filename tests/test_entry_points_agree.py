"""Every entry point gives the same features and probabilities for the same images and head,
views included (issue 17): the local engine (`extract`), the Ray engine (`extract --engine
ray`), `predict` (local and Ray), `serve` (`/predict` and V2 `/v2/models/.../infer`) and the
Python API (`featcache.load_head(...).predict`). Real weights, 6 real images, a head trained on
2 dihedral views of each of 24 (so 3 rows per image, averaged), with its out-of-distribution
guard (which needs at least 10 training images).

Takes over what tests/service/test_views_served.py checked (serve averages the cached views; a
repeated upload runs no forward pass), and adds the engines and `predict`; a head without views
is tests/service/test_python_api_matches.py's.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

pytestmark = pytest.mark.slow

VIEWS, MODE = 2, "dihedral"
#: Features of one image from two runs of the same runtime differ only by float rounding of a
#: different batch composition; maps reach ~100.
FEATURES_ATOL = 1e-3
PROBA_ATOL = 1e-5


@pytest.fixture(scope="module")
def images(small_image_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 real images per class, in the image-folder layout."""
    root = tmp_path_factory.mktemp("agree") / "images"
    for cls in ("defective", "functional"):
        (root / cls).mkdir(parents=True)
        for f in sorted((small_image_dir / cls).iterdir())[:3]:
            shutil.copy(f, root / cls / f.name)
    return root


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A small local Ray (as tests/extractor's `local_ray`), or the one already running."""
    import ray

    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # else Ray writes a token under the home folder
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
                 _node_ip_address="127.0.0.1", _temp_dir=str(tmp_path_factory.mktemp("ray")),
                 log_to_driver=False,
                 runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
    yield ray
    if started:
        ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = saved


@pytest.fixture(scope="module")
def extracted(images: Path, small_image_dir: Path, conv_base: Any, ray_local: Any
              ) -> dict[str, Path]:
    """The folder extracted with its views by the local engine and by the Ray engine (whose
    actor builds its own conv base with `ConvBase.from_spec`), and the head's training set."""
    from extractor import ray_engine
    from extractor.runner import Options, run

    out = images.parent

    def opts(name: str) -> Options:
        return Options(directory=images, out=out / name, progress=False, augment=VIEWS,
                       augment_mode=MODE, runtime=conv_base.runtime)

    run(opts("local.h5"), features_fn=conv_base)
    summary = ray_engine.run(opts("ray.h5"), ray_engine.RayOptions(actors=1))
    assert summary.extracted == 6 and not summary.skipped
    run(dataclasses.replace(opts("train.h5"), directory=small_image_dir), features_fn=conv_base)
    return {"local": out / "local.h5", "ray": out / "ray.h5", "train": out / "train.h5"}


@pytest.fixture(scope="module")
def head_dir(extracted: dict[str, Path]) -> Path:
    from classifier.artifact import load_head
    from classifier.training import train

    head_dir = train(extracted["train"], extracted["train"].parent / "head", cv=0,
                     val_split=0.25)
    head = load_head(head_dir)
    assert (head.views.count, head.views.mode) == (VIEWS, MODE)
    assert head.has_guard  # train-head's default: so its scores are compared too
    return head_dir


def _reference(cache_path: Path, head: Any) -> tuple[dict[str, NDArray[np.float64]],
                                                     dict[str, float]]:
    """Per file: the mean of the head's probabilities over its cached rows (the image and its
    views), computed here by hand, and the guard's score of the image's own row."""
    from extractor import open_cache

    with open_cache(cache_path) as cache:
        paths = np.asarray(cache.paths)
        views = np.asarray(cache.views)
        feats = cache.read_named(list(dict.fromkeys(
            [*head.feature_names, *head.detector.feature_names])))
    proba = np.asarray(head.predict_proba(feats), dtype=np.float64)
    scores = head.ood_scores(feats)
    means, guard = {}, {}
    alone = []  # how far each image's own row is from its mean over views
    for rel in np.unique(paths):
        mine = paths == rel
        assert mine.sum() == VIEWS + 1, rel
        mean = proba[mine].mean(axis=0)
        means[str(rel)] = mean / mean.sum()
        own = mine & (views == 0)
        guard[str(rel)] = float(scores[own][0])
        alone.append(float(np.abs(proba[own][0] - means[str(rel)]).max()))
    # The views matter: an entry point that skipped them would be caught.
    assert max(alone) > 100 * PROBA_ATOL, alone
    return means, guard


def test_every_entry_point_agrees(
    images: Path, extracted: dict[str, Path], head_dir: Path, conv_base: Any,
    weights_path: Path,
) -> None:
    import tritonclient.http as httpclient
    from fastapi.testclient import TestClient

    import featcache
    from classifier.artifact import load_head
    from extractor import open_cache
    from extractor.pipeline import sha256_of, view_keys
    from featcache.predict_cli import main as predict
    from service.app import create_app
    from service.config import Settings

    head = load_head(head_dir)
    files = sorted(images.rglob("*.png"))
    rels = [f.relative_to(images).as_posix() for f in files]

    # Features: the Ray engine's cache holds the local engine's rows, views included.
    with open_cache(extracted["local"]) as local, open_cache(extracted["ray"]) as ray:
        assert local.paths == ray.paths and local.sha256 == ray.sha256
        assert local.views.tolist() == ray.views.tolist() == [0, 1, 2] * 6
        names = local.spec.stored_names()
        local_rows, ray_rows = local.read_named(names), ray.read_named(names)
        local_paths, local_views = np.asarray(local.paths), np.asarray(local.views)
    for name in names:
        np.testing.assert_allclose(ray_rows[name], local_rows[name], rtol=0,
                                   atol=FEATURES_ATOL, err_msg=name)
    want, want_guard = _reference(extracted["local"], head)

    # predict: from the local engine's cache and from the Ray engine's (each already complete,
    # so `predict` reads it: its own averaging and guard are what is compared).
    for engine in ("local", "ray"):
        out = images.parent / f"predict-{engine}.csv"
        argv = ["--head", str(head_dir), "--dir", str(images), "--out", str(out),
                "--cache", str(extracted[engine]), "--engine", engine, "-q"]
        if engine == "ray":
            argv += ["--actors", "1"]
        assert predict(argv) == 0
        with open(out, newline="") as fh:
            rows = {r["path"]: r for r in csv.DictReader(fh)}
        assert sorted(rows) == rels
        for rel in rels:
            got = [float(rows[rel][f"p_{c}"]) for c in head.classes_]
            np.testing.assert_allclose(got, want[rel], atol=PROBA_ATOL, err_msg=f"{engine} {rel}")
            assert float(rows[rel]["ood_score"]) == pytest.approx(want_guard[rel], abs=1e-5)

    # The Python API: its own conv base (ConvBase.from_spec of the head's spec).
    api = featcache.load_head(head_dir, weights=weights_path).predict(files)
    np.testing.assert_allclose(api.probabilities, [want[r] for r in rels], atol=PROBA_ATOL)
    assert api.ood_scores is not None
    np.testing.assert_allclose(api.ood_scores, [want_guard[r] for r in rels], atol=1e-5)

    # serve: /predict, then V2 for all at once.
    settings = Settings(_env_file=None, heads=[head_dir], weights=str(weights_path))  # type: ignore[call-arg]
    app = create_app(settings, backbone_factory=lambda *_: conv_base)
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        predictor = app.state.featcache.predictor
        for f, rel in zip(files, rels, strict=True):
            upload = {"file": (f.name, f.read_bytes())}
            body = client.post("/predict", files=upload).json()
            assert (body["views"], body["cached"]) == (VIEWS + 1, False), body
            got = [body["probabilities"][c] for c in head.classes_]
            np.testing.assert_allclose(got, want[rel], atol=PROBA_ATOL, err_msg=rel)
            assert body["ood_score"] == pytest.approx(want_guard[rel], abs=1e-5)
            assert body["label"] == api.labels[rels.index(rel)]
            # The served features of the upload and each view are the cached rows.
            keys = view_keys(sha256_of(f.read_bytes()), head.views)
            for view, key in enumerate(keys):
                served = predictor.cache.get(key)
                assert served is not None
                row = np.flatnonzero((local_paths == rel) & (local_views == view))[0]
                for name in head.feature_names:
                    np.testing.assert_allclose(served[name][0], local_rows[name][row],
                                               rtol=0, atol=FEATURES_ATOL, err_msg=name)
            # Every view is in the feature cache: the same upload runs no forward pass.
            passes = predictor.batcher.forward_passes
            again = client.post("/predict", files=upload).json()
            assert again["cached"] is True and again["probabilities"] == body["probabilities"]
            assert predictor.batcher.forward_passes == passes

        tensor = httpclient.InferInput("IMAGE", [len(files)], "BYTES")
        tensor.set_data_from_numpy(np.array([f.read_bytes() for f in files], dtype=np.object_))
        outputs = [httpclient.InferRequestedOutput(n, binary_data=True)
                   for n in ("PROBABILITIES", "LABEL", "OOD_SCORE")]
        body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor],
                                                                                 outputs)
        r = client.post(f"/v2/models/{head.name}/infer", content=body,
                        headers={"Inference-Header-Content-Length": str(json_size)})
        assert r.status_code == 200, r.text
        result = httpclient.InferenceServerClient.parse_response_body(
            r.content, header_length=r.headers.get("inference-header-content-length"))
        v2 = result.as_numpy("PROBABILITIES")
        assert v2 is not None and v2.shape == (len(files), len(head.classes_))
        # FP32 on the wire.
        np.testing.assert_allclose(v2, [want[r] for r in rels], atol=1e-6)
        v2_scores = result.as_numpy("OOD_SCORE")
        assert v2_scores is not None
        np.testing.assert_allclose(v2_scores, [want_guard[r] for r in rels], atol=1e-5)
        labels = result.as_numpy("LABEL")
        assert labels is not None
        assert [x.decode() if isinstance(x, bytes) else str(x) for x in labels] == api.labels
