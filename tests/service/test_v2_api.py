"""The /v2 routes in process on a fake conv base: tritonclient's own request bytes, the protocol's
error shape, the same limits and API key as /predict. The real client against a real server is
in test_v2_triton.py."""

from __future__ import annotations

import base64
import gzip

import numpy as np
import pytest
import tritonclient.http as httpclient
from fastapi.testclient import TestClient
from imagegen import encode, gradient
from PIL import Image

IMAGES = [encode(Image.fromarray(gradient(64, 64, seed=s))) for s in (3, 5, 8)]
MODEL = "elpv-logreg"
ELPV_CLASSES = ["defective", "functional"]


def infer_body(images: list[bytes], binary_output: bool = True) -> tuple[bytes, dict[str, str]]:
    tensor = httpclient.InferInput("IMAGE", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary_output)
               for name in ("PROBABILITIES", "LABEL")]
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor], outputs)
    return body, {"Inference-Header-Content-Length": str(json_size)}


def read_result(response) -> httpclient.InferResult:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    return httpclient.InferenceServerClient.parse_response_body(
        response.content, header_length=response.headers.get("inference-header-content-length"))


def assert_v2_error(response, status: int, fragment: str = "") -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert fragment.lower() in body["error"].lower(), body


def test_health_and_metadata(fake_app) -> None:  # type: ignore[no-untyped-def]
    with fake_app() as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        server = client.get("/v2").json()
        assert server["name"] == "featcache"
        assert {"binary_tensor_data", "classification"} <= set(server["extensions"])
        meta = client.get(f"/v2/models/{MODEL}").json()
        assert meta["name"] == MODEL and meta["versions"] == []  # an unversioned --head head
        assert meta["platform"] == "featcache_logreg"
        assert meta["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1]}]
        assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
            ("PROBABILITIES", "FP32", [-1, 2]), ("LABEL", "BYTES", [-1]),
            # the head has an out-of-distribution guard (train-head's default)
            ("OOD_SCORE", "FP32", [-1]), ("IN_DISTRIBUTION", "BOOL", [-1])]
        assert meta["parameters"]["classes"] == ELPV_CLASSES
        assert client.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
        assert_v2_error(client.get("/v2/models/nope"), 404, "nope")
        assert_v2_error(client.get("/v2/models/nope/ready"), 404)
        assert_v2_error(client.get(f"/v2/models/{MODEL}/versions/1"), 404, "unversioned")


@pytest.mark.parametrize("binary_output", [True, False], ids=["binary", "json"])
def test_infer_equals_predict(fake_app, binary_output: bool) -> None:  # type: ignore[no-untyped-def]
    with fake_app() as client:
        body, headers = infer_body(IMAGES, binary_output)
        result = read_result(client.post(f"/v2/models/{MODEL}/infer", content=body,
                                          headers=headers))
        probabilities = result.as_numpy("PROBABILITIES")
        labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("LABEL")]
        assert probabilities.dtype == np.float32 and probabilities.shape == (3, 2)
        for i, image in enumerate(IMAGES):
            single = client.post("/predict", files={"file": ("a.png", image)}).json()
            want = [single["probabilities"][c] for c in ELPV_CLASSES]
            np.testing.assert_allclose(probabilities[i], want, rtol=1e-6, atol=1e-7)
            assert labels[i] == single["label"]
            assert single["cached"] is True  # /v2 filled the same feature cache
        assert client.app.state.fake_backbone.batch_sizes  # type: ignore[attr-defined]


def test_json_base64_and_gzip_requests(fake_app) -> None:  # type: ignore[no-untyped-def]
    request = {"id": "q7", "inputs": [{
        "name": "IMAGE", "datatype": "BYTES", "shape": [2, 1],
        "data": [[base64.b64encode(IMAGES[0]).decode()], [base64.b64encode(IMAGES[1]).decode()]],
    }]}
    with fake_app() as client:
        r = client.post(f"/v2/models/{MODEL}/infer", json=request)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["id"] == "q7" and body["model_name"] == MODEL
        outputs = {o["name"]: o for o in body["outputs"]}
        assert outputs["PROBABILITIES"]["shape"] == [2, 2]
        assert len(outputs["PROBABILITIES"]["data"]) == 4 and len(outputs["LABEL"]["data"]) == 2

        raw, headers = infer_body(IMAGES[:1])
        r = client.post(f"/v2/models/{MODEL}/infer", content=gzip.compress(raw),
                        headers={**headers, "Content-Encoding": "gzip"})
        assert read_result(r).as_numpy("PROBABILITIES").shape == (1, 2)


def test_errors_have_the_protocol_shape(fake_app) -> None:  # type: ignore[no-untyped-def]
    with fake_app(max_batch_files=2, max_upload_bytes=len(max(IMAGES, key=len)) + 10) as client:
        url = f"/v2/models/{MODEL}/infer"
        body, headers = infer_body([IMAGES[0], b"these are my notes"])
        assert_v2_error(client.post(url, content=body, headers=headers), 400,
                        "IMAGE[1]: not an image")
        assert_v2_error(client.post(url, json={"inputs": [{"name": "X", "datatype": "BYTES",
                                                           "shape": [1], "data": ["aGk="]}]}),
                        400, "IMAGE")
        assert_v2_error(client.post(url, content=b"{"), 400, "JSON")
        body, headers = infer_body(IMAGES)
        assert_v2_error(client.post(url, content=body, headers=headers), 413, "too many")
        body, headers = infer_body([IMAGES[0] + b"\0" * 100])
        assert_v2_error(client.post(url, content=body, headers=headers), 413, "too large")
        body, headers = infer_body(IMAGES[:1])
        assert_v2_error(client.post("/v2/models/nope/infer", content=body, headers=headers),
                        404, "nope")
        assert_v2_error(client.post(f"/v2/models/{MODEL}/versions/x/infer", content=body,
                                    headers=headers), 404, "version")
        assert_v2_error(client.get(url), 405)
        # Our own routes keep our format.
        assert client.get("/nowhere").json()["error"]["code"] == "not_found"
    with fake_app(max_batch_request_bytes=1000) as client:
        body, headers = infer_body(IMAGES[:2])
        assert_v2_error(client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers),
                        413, "limit")


def test_api_key(fake_app) -> None:  # type: ignore[no-untyped-def]
    body, headers = infer_body(IMAGES[:1])
    with fake_app(api_key="s3cret") as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        for method, path in (("get", "/v2"), ("get", f"/v2/models/{MODEL}"),
                             ("get", f"/v2/models/{MODEL}/ready"),
                             ("post", f"/v2/models/{MODEL}/infer")):
            kw = {"content": body, "headers": headers} if method == "post" else {}
            assert_v2_error(getattr(client, method)(path, **kw), 401, "api key")
        r = client.post(f"/v2/models/{MODEL}/infer", content=body,
                        headers={**headers, "X-API-Key": "s3cret"})
        assert read_result(r).as_numpy("LABEL").shape == (1,)


def test_not_ready_is_503(loading_client: TestClient) -> None:
    client = loading_client
    assert client.get("/v2/health/live").status_code == 200
    assert_v2_error(client.get("/v2/health/ready"), 503, "loading")
    assert_v2_error(client.get(f"/v2/models/{MODEL}/ready"), 503, "loading")
    body, headers = infer_body(IMAGES[:1])
    r = client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
    assert_v2_error(r, 503)
    assert r.headers["retry-after"]
