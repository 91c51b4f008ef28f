"""Every bad request gets its status and the one error format, never a 500 (fake conv base)."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from imagegen import encode, gradient, png_header_claiming
from PIL import Image

from service.api.deps import get_head

GOOD = encode(Image.fromarray(gradient(64, 64, seed=3)))


def assert_error(response, status: int, code: str, fragment: str = "") -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert fragment.lower() in body["error"]["message"].lower(), body


def test_good_image_is_predicted(fake_app) -> None:  # type: ignore[no-untyped-def]
    with fake_app() as client:
        r = client.post("/predict", files={"file": ("a.png", GOOD, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["head"] == "elpv-logreg"
    assert set(body["probabilities"]) == {"defective", "functional"}
    assert body["label"] in body["probabilities"]
    assert body["cached"] is False


def test_no_file_is_422(fake_app) -> None:  # type: ignore[no-untyped-def]
    with fake_app() as client:
        assert_error(client.post("/predict"), 422, "validation_error", "file")
        assert_error(client.post("/predict", files={"other": ("a.png", GOOD)}), 422,
                     "validation_error", "file")
        assert_error(client.post("/predict", data={"file": "not a file"}), 422,
                     "validation_error")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"these are my notes\n", "not an image"),
        (b"<html>not really a jpeg</html>", "not an image"),
        (GOOD[: len(GOOD) // 3], "unreadable"),
        (encode(Image.fromarray(gradient(64, 64, seed=4)), "JPEG")[:300], "unreadable"),
        (encode(Image.new("RGB", (2, 2), "red")), "too small"),
    ],
    ids=["empty", "text", "fake-jpeg", "truncated-png", "truncated-jpeg", "tiny"],
)
def test_unusable_image_is_422(fake_app, data: bytes, fragment: str) -> None:  # type: ignore[no-untyped-def]
    with fake_app() as client:
        r = client.post("/predict", files={"file": ("x.png", data, "image/png")})
    assert_error(r, 422, "invalid_image", fragment)


def test_decompression_bomb_is_413(fake_app) -> None:  # type: ignore[no-untyped-def]
    with fake_app() as client:
        bomb = png_header_claiming(50_000, 50_000)
        r = client.post("/predict", files={"file": ("bomb.png", bomb)})
    assert_error(r, 413, "image_too_large", "too large")


def test_upload_over_limit_is_413_before_reading(fake_app) -> None:  # type: ignore[no-untyped-def]
    big = GOOD + b"\0" * 5000
    with fake_app(max_upload_bytes=4000) as client:
        # With a Content-Length: refused from the header alone.
        r = client.post("/predict", files={"file": ("big.png", big + b"\0" * 70_000)})
        assert_error(r, 413, "upload_too_large", "limit")

        # Chunked, no Content-Length: cut off as soon as the count passes the limit.
        def chunks():  # type: ignore[no-untyped-def]
            header = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
                      b"Content-Type: image/png\r\n\r\n")
            yield header
            for _ in range(1000):
                yield b"\0" * 1024
            yield b"\r\n--b--\r\n"

        r = client.post("/predict", content=chunks(),
                        headers={"content-type": "multipart/form-data; boundary=b"})
        assert_error(r, 413, "upload_too_large")
        # (TestClient buffers the whole body; test_serve_cli.py shows a real server answering
        # before the body is sent.)

        # Under the body limit (which allows for the multipart framing), over the file limit.
        r = client.post("/predict", files={"file": ("big.png", big)})
        assert_error(r, 413, "upload_too_large", "4000")


def test_unknown_head_is_404(fake_app) -> None:  # type: ignore[no-untyped-def]
    with fake_app() as client:
        r = client.post("/predict?head=nope", files={"file": ("a.png", GOOD)})
        assert_error(r, 404, "unknown_head", "nope")
        assert "elpv-logreg" in r.json()["error"]["message"]
        r = client.post("/predict/batch?head=nope", files=[("files", ("a.png", GOOD))])
        assert_error(r, 404, "unknown_head")


def test_unknown_route_and_method_use_the_error_format(fake_app) -> None:  # type: ignore[no-untyped-def]
    with fake_app() as client:
        assert_error(client.get("/nowhere"), 404, "not_found")
        assert_error(client.get("/predict"), 405, "method_not_allowed")


def test_unexpected_error_is_a_generic_500_and_logged(
    fake_app, caplog: pytest.LogCaptureFixture  # type: ignore[no-untyped-def]
) -> None:
    def broken_head() -> None:
        raise RuntimeError("secret internal detail")

    with fake_app() as client:
        client.app.dependency_overrides[get_head] = broken_head  # type: ignore[attr-defined]
        with caplog.at_level(logging.ERROR):
            r = client.post("/predict", files={"file": ("a.png", GOOD)})
    assert_error(r, 500, "internal_error")
    assert "secret" not in r.text
    assert any("secret internal detail" in (rec.exc_text or "") or
               (rec.exc_info and "secret internal detail" in str(rec.exc_info[1]))
               for rec in caplog.records)


def test_batch_isolates_bad_files(fake_app) -> None:  # type: ignore[no-untyped-def]
    files = [
        ("files", ("good.png", GOOD, "image/png")),
        ("files", ("text.txt", b"hello", "text/plain")),
        ("files", ("bomb.png", png_header_claiming(50_000, 50_000), "image/png")),
        ("files", ("good2.png", encode(Image.fromarray(gradient(80, 60, seed=9))), "image/png")),
    ]
    with fake_app() as client:
        r = client.post("/predict/batch", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["succeeded"], body["failed"]) == (2, 2)
    results = body["results"]
    assert [x["index"] for x in results] == [0, 1, 2, 3]
    assert [x["filename"] for x in results] == ["good.png", "text.txt", "bomb.png", "good2.png"]
    assert results[0]["label"] and results[0]["error"] is None
    assert results[1]["error"]["code"] == "invalid_image" and results[1]["label"] is None
    assert results[2]["error"]["code"] == "image_too_large"
    assert results[3]["label"] and results[3]["error"] is None


def test_batch_limits(fake_app) -> None:  # type: ignore[no-untyped-def]
    with fake_app(max_batch_files=2, max_upload_bytes=len(GOOD) + 10) as client:
        files = [("files", (f"{i}.png", GOOD)) for i in range(3)]
        assert_error(client.post("/predict/batch", files=files), 413, "too_many_files", "2")
        assert_error(client.post("/predict/batch"), 422, "validation_error", "files")
        big = [("files", ("ok.png", GOOD)), ("files", ("big.png", GOOD + b"\0" * 100))]
        r = client.post("/predict/batch", files=big)
        assert r.status_code == 200
        assert r.json()["results"][1]["error"]["code"] == "upload_too_large"
    with fake_app(max_batch_request_bytes=1000) as client:
        files = [("files", (f"{i}.png", GOOD)) for i in range(2)]
        assert_error(client.post("/predict/batch", files=files), 413, "upload_too_large")


def test_api_key(fake_app) -> None:  # type: ignore[no-untyped-def]
    upload = {"file": ("a.png", GOOD)}
    with fake_app(api_key="s3cret") as client:
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 200
        for method, path in (("post", "/predict"), ("get", "/heads"), ("get", "/metrics")):
            kw = {"files": upload} if method == "post" else {}
            assert_error(getattr(client, method)(path, **kw), 401, "unauthorized", "api key")
            assert_error(getattr(client, method)(path, headers={"X-API-Key": "wrong"}, **kw),
                         401, "unauthorized", "invalid")
        assert_error(client.post("/predict/batch", files=[("files", ("a.png", GOOD))]), 401,
                     "unauthorized")
        ok = client.post("/predict", files=upload, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200
        ok = client.get("/heads", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_not_ready_is_503(loading_client: TestClient) -> None:
    client = loading_client
    assert client.get("/health").json() == {"status": "ok"}
    assert_error(client.get("/ready"), 503, "not_ready", "loading")
    r = client.post("/predict", files={"file": ("a.png", GOOD)})
    assert_error(r, 503, "not_ready")
    assert r.headers["retry-after"]
