"""Issue 20, items 1, 2 and 4: the /v2 infer route against abusive requests, in process on a
fake conv base. Repeated outputs, elements past the shape, parsing on the event loop, deep
JSON, huge version numbers and loose Inference-Header-Content-Length values."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from imagegen import encode, gradient
from PIL import Image

from service import v2_protocol as v2

IMAGE = encode(Image.fromarray(gradient(64, 64, seed=3)))
MODEL = "elpv-logreg"
URL = f"/v2/models/{MODEL}/infer"


def assert_v2_error(response, status: int, fragment: str = "") -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert fragment.lower() in body["error"].lower(), body


def json_request(images: list[bytes], **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [len(images)],
                        "data": [base64.b64encode(i).decode() for i in images]}], **extra}


def binary_request(header: dict[str, Any], data: bytes) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(header).encode()
    return raw + data, {v2.HEADER_LENGTH: str(len(raw))}


def test_repeated_outputs_are_refused(fake_app) -> None:  # type: ignore[no-untyped-def]
    """Item 1: each copy of an output was built and sent: 5 MB in, 180 MB out."""
    with fake_app() as client:
        for outputs in ([{"name": "LABEL"}, {"name": "LABEL"}],
                        [{"name": "PROBABILITIES"}, {"name": "LABEL"},
                         {"name": "PROBABILITIES", "parameters": {"classification": 1}}]):
            r = client.post(URL, json=json_request([IMAGE], outputs=outputs))
            assert_v2_error(r, 400, f"output '{outputs[0]['name']}' is requested more than once")
        # Each output once, in any order, still answers.
        r = client.post(URL, json=json_request([IMAGE], outputs=[{"name": "LABEL"},
                                                                 {"name": "PROBABILITIES"}]))
        assert r.status_code == 200, r.text
        assert [o["name"] for o in r.json()["outputs"]] == ["LABEL", "PROBABILITIES"]


def test_elements_past_the_shape_are_not_read(fake_app) -> None:  # type: ignore[no-untyped-def]
    """Item 2: 32 MiB of empty BYTES elements under shape [1] used to be unpacked, all 8 Mi of
    them, before their count was compared with the shape (6 s). Reading now stops at the
    second element: the message cannot know how many there are. An element's length is checked
    against the limit before its bytes are read."""
    n = 8 << 20
    header = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                          "parameters": {"binary_data_size": 4 * n}}]}
    with fake_app() as client:
        body, headers = binary_request(header, bytes(4 * n))
        t = time.perf_counter()
        r = client.post(URL, content=body, headers=headers)
        print(f"refused in {time.perf_counter() - t:.2f} s")
        assert_v2_error(r, 400, "IMAGE holds more elements than its shape's 1")
        # The same as base64 strings in JSON.
        r = client.post(URL, json={"inputs": [{"name": "IMAGE", "datatype": "BYTES",
                                               "shape": [2], "data": [""] * 100_000}]})
        assert_v2_error(r, 400, "more elements than its shape's 2")

    with fake_app(max_upload_bytes=1000) as client:
        # The first element claims 1 MB (and the body ends long before): too large, from its
        # length alone.
        data = (1 << 20).to_bytes(4, "little") + b"x" * 100
        header["inputs"][0]["parameters"]["binary_data_size"] = len(data)
        body, headers = binary_request(header, data)
        assert_v2_error(client.post(URL, content=body, headers=headers), 413,
                        f"IMAGE[0] is too large: {1 << 20} bytes, the limit is 1000")
        big = base64.b64encode(b"y" * 2000).decode()
        r = client.post(URL, json={"inputs": [{"name": "IMAGE", "datatype": "BYTES",
                                               "shape": [1], "data": [big]}]})
        assert_v2_error(r, 413, "IMAGE[0] is too large")


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def test_parsing_runs_off_the_event_loop(fake_app, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Item 2: a large body was parsed on the event loop, and /health waited for it (5.9 s,
    where compose's health check gives 4). The parse here blocks until /health has answered,
    or 10 s: on the event loop, /health could only answer after it."""
    parsing = threading.Event()
    health_answered = threading.Event()
    seen: dict[str, Any] = {}
    real = v2.parse_infer_request

    def slow_parse(*args: Any, **kwargs: Any) -> v2.InferRequest:
        seen["on_loop"] = _on_event_loop()
        parsing.set()
        seen["health_first"] = health_answered.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(v2, "parse_infer_request", slow_parse)
    with fake_app() as client, ThreadPoolExecutor(1) as pool:
        # Larger than the bodies parsed inline (one image and its header).
        body = json.dumps(json_request([IMAGE], id="x" * (1 << 20))).encode()
        pending = pool.submit(client.post, URL, content=body)
        assert parsing.wait(30), "the request was never parsed"
        health = client.get("/health")
        health_answered.set()
        r = pending.result(60)
    assert health.status_code == 200
    assert seen == {"on_loop": False, "health_first": True}
    assert r.status_code == 200, r.text


def test_bad_input_is_4xx_not_500(fake_app) -> None:  # type: ignore[no-untyped-def]
    """Item 4: JSON nested 100,000 deep (RecursionError) and a 5,000-digit version (int()
    refuses over 4,300 digits) were 500s."""
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    huge = "9" * 5000
    with fake_app() as client:
        assert_v2_error(client.post(URL, content=deep), 400, "nests JSON")
        deep_object = b'{"id": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"}"
        assert_v2_error(client.post(URL, content=deep_object), 400, "nests JSON")
        body = json.dumps(json_request([IMAGE])).encode()
        assert_v2_error(client.post(f"/v2/models/{MODEL}/versions/{huge}/infer", content=body),
                        404, "not a version number")
        assert_v2_error(client.get(f"/v2/models/{MODEL}/versions/{huge}"), 404, "version")
        assert_v2_error(client.get(f"/v2/models/{MODEL}/versions/{huge}/ready"), 404, "version")
        r = client.post(f"/predict?version={huge}", files={"file": ("a.png", IMAGE)})
        assert 400 <= r.status_code < 500, r.text


def test_header_length_takes_plain_ascii_digits_only(fake_app) -> None:  # type: ignore[no-untyped-def]
    """Item 4: int() read "1_0", "+10" and " 10 " as 10 (and non-ASCII digits, which HTTP's
    latin-1 headers cannot carry: test_v2_protocol.py checks those)."""
    body, headers = binary_request({"inputs": [{"name": "IMAGE", "datatype": "BYTES",
                                                "shape": [1], "parameters": {
                                                    "binary_data_size": 4 + len(IMAGE)}}]},
                                   v2.serialize_bytes([IMAGE]))
    n = headers[v2.HEADER_LENGTH]
    with fake_app() as client:
        assert client.post(URL, content=body, headers=headers).status_code == 200
        for loose in (f"{n[0]}_{n[1:]}", f"+{n}", f"0x{int(n):x}", f"{n}.0"):
            r = client.post(URL, content=body, headers={v2.HEADER_LENGTH: loose})
            assert_v2_error(r, 400, "plain digits")
        # Surrounding spaces are dropped by the HTTP parser itself, before we see the value;
        # an inner one is not.
        r = client.post(URL, content=body, headers={v2.HEADER_LENGTH: f"{n[0]} {n[1:]}"})
        assert_v2_error(r, 400, "plain digits")
