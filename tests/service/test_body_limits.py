"""Issue 20, item 3: the bytes of request bodies held at once, and the time a client may take
to send one, are bounded; a real uvicorn on 127.0.0.1 and raw sockets, since only a real
server shows a body arriving slowly."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from imagegen import encode, gradient
from liveserver import live_server
from PIL import Image
from pydantic import ValidationError

from service import v2_protocol as v2
from service.app import create_app
from service.config import MIB, Settings

IMAGE = encode(Image.fromarray(gradient(64, 64, seed=3)))
URL_PATH = "/v2/models/elpv-logreg/infer"


def infer_body(padding: int = 0) -> tuple[bytes, dict[str, str]]:
    """A one-image binary /v2 request; `padding` bytes of spaces in its JSON header make it
    as large as a test needs."""
    data = v2.serialize_bytes([IMAGE])
    header = json.dumps({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(data)}}]})
    raw = (header + " " * padding).encode()
    return raw + data, {v2.HEADER_LENGTH: str(len(raw))}


async def start_sending(url: str, body: bytes, headers: dict[str, str], send: int
                        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that sends the request's headers and the first `send` bytes of its body, then
    stops (a slow sender, or a large upload still on its way)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (f"POST {URL_PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n")
    writer.write(head.encode() + body[:send])
    await writer.drain()
    return reader, writer


async def read_response(reader: asyncio.StreamReader, timeout_s: float) -> tuple[int, bytes]:
    """The status and everything the server sent until it closed the connection."""
    raw = await asyncio.wait_for(reader.read(), timeout_s)
    status = int(raw.split(b" ", 2)[1]) if raw else 0
    return status, raw


def test_bytes_in_flight_are_bounded(head_dir: Path, settings_for: Any, make_fake: Any) -> None:  # type: ignore[no-untyped-def]
    """Two 60 kB uploads fit in a 150 kB budget, a third is 503 with Retry-After before its
    body is read (or, sent chunked, as soon as it passes the budget); once one finishes, there
    is room again."""
    app = create_app(settings_for([head_dir], max_batch_request_bytes=100_000,
                                  max_body_bytes_in_flight=150_000, warmup=False),
                     backbone_factory=lambda *_: make_fake())
    body, headers = infer_body(padding=60_000 - len(infer_body()[0]))
    assert len(body) == 60_000

    async def scenario() -> None:
        async with live_server(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as c:
            assert (await c.post(URL_PATH, content=body, headers=headers)).status_code == 200
            first = await start_sending(url, body, headers, send=1000)
            second = await start_sending(url, body, headers, send=1000)
            await asyncio.sleep(0.3)  # both are admitted, their bodies on their way
            r = await c.post(URL_PATH, content=body, headers=headers)
            assert r.status_code == 503, r.text
            assert "in flight" in r.json()["error"] and int(r.headers["retry-after"]) > 0

            async def chunks() -> Any:
                for i in range(0, len(body), 10_000):
                    yield body[i:i + 10_000]

            r = await c.post(URL_PATH, content=chunks(), headers=headers)  # no Content-Length
            assert r.status_code == 503, r.text
            r = await c.post("/predict", files={"file": ("a.png", IMAGE + b" " * 55_000)})
            assert r.status_code == 503, r.text  # /predict shares the budget

            reader, writer = first
            writer.write(body[1000:])  # the first upload completes and is answered
            await writer.drain()
            status, raw = await asyncio.wait_for(_status_line(reader), 30)
            assert status == 200, raw
            writer.close()
            r = await c.post(URL_PATH, content=body, headers=headers)
            assert r.status_code == 200, r.text
            second[1].close()

    asyncio.run(scenario())


async def _status_line(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    line = await reader.readline()
    return int(line.split(b" ", 2)[1]), line


def test_slow_senders_are_cut_off(head_dir: Path, settings_for: Any, make_fake: Any) -> None:  # type: ignore[no-untyped-def]
    """A client that stops sending halfway is answered 408 once body_timeout_s has passed and
    its connection is closed; its share of the bytes in flight comes back."""
    app = create_app(settings_for([head_dir], max_batch_request_bytes=100_000,
                                  max_body_bytes_in_flight=100_000, body_timeout_s=1.0,
                                  warmup=False),
                     backbone_factory=lambda *_: make_fake())
    body, headers = infer_body(padding=50_000)

    async def scenario() -> None:
        async with live_server(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as c:
            reader, writer = await start_sending(url, body, headers, send=len(body) // 2)
            # Meanwhile it holds the whole budget.
            assert (await c.post(URL_PATH, content=body, headers=headers)).status_code == 503
            status, raw = await read_response(reader, timeout_s=20)  # EOF: closed
            writer.close()
            assert status == 408, raw
            assert b"FEATCACHE_BODY_TIMEOUT_S" in raw
            # Headers sent, no body at all: the same.
            reader, writer = await start_sending(url, body, headers, send=0)
            status, raw = await read_response(reader, timeout_s=20)
            writer.close()
            assert status == 408, raw
            # A /predict upload too.
            host, port = url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
            await writer.drain()
            status, raw = await read_response(reader, timeout_s=20)
            writer.close()
            assert status == 408, raw
            r = await c.post(URL_PATH, content=body, headers=headers)
            assert r.status_code == 200, r.text  # the budget is whole again

    asyncio.run(scenario())


def test_the_largest_batch_must_fit_in_flight() -> None:

    with pytest.raises(ValidationError, match="max_body_bytes_in_flight"):
        Settings(_env_file=None, max_batch_request_bytes=200 * MIB)  # type: ignore[call-arg]
    settings = Settings(_env_file=None, max_batch_request_bytes=200 * MIB,  # type: ignore[call-arg]
                        max_body_bytes_in_flight=400 * MIB)
    assert settings.max_body_bytes_in_flight == 400 * MIB
