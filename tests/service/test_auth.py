"""Issue 11, item 4: with an API key set, a request without it is refused before its body is
read, so a client without the key cannot make the server take in 64 MiB per request."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from liveserver import live_server

from service.app import create_app


def _app(head_dir: Path, settings_for: Any, make_fake: Any) -> Any:
    fake = make_fake()
    return create_app(settings_for([head_dir], api_key="s3cret", warmup=False),
                      backbone_factory=lambda *_: fake)


def test_no_key_is_401_before_the_body_is_read(
    head_dir: Path, settings_for: Any, make_fake: Any  # type: ignore[no-untyped-def]
) -> None:
    """The ASGI app itself: it answers 401 without once asking for the body."""
    app = _app(head_dir, settings_for, make_fake)
    chunks = 160  # 10 MiB of body, were it asked for

    async def call(path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
        received = 0
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            nonlocal received
            received += 1
            return {"type": "http.request", "body": b"\0" * 65536,
                    "more_body": received < chunks}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
            "root_path": "", "query_string": b"", "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000),
            "headers": [(b"host", b"x"), (b"content-length", str(chunks * 65536).encode()),
                        (b"content-type", b"multipart/form-data; boundary=b"), *headers],
        }
        await app(scope, receive, send)
        return sent[0]["status"], received

    for path in ("/predict", "/predict/batch"):
        assert asyncio.run(call(path, [])) == (401, 0)
        assert asyncio.run(call(path, [(b"x-api-key", b"wrong")])) == (401, 0)
        assert asyncio.run(call(path, [(b"authorization", b"Bearer wrong")])) == (401, 0)


def test_no_key_is_answered_before_the_body_is_sent(
    head_dir: Path, settings_for: Any, make_fake: Any  # type: ignore[no-untyped-def]
) -> None:
    """A real server answers 401 from the headers while the client has sent no body at all."""
    app = _app(head_dir, settings_for, make_fake)

    async def scenario() -> str:
        async with live_server(app) as url:
            port = int(url.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /predict/batch HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: 30000000\r\n\r\n")
            await writer.drain()
            try:
                return (await asyncio.wait_for(reader.read(4096), 5)).decode("latin-1")
            finally:
                writer.close()

    reply = asyncio.run(scenario())
    assert reply.startswith("HTTP/1.1 401"), reply
    assert '"unauthorized"' in reply


def test_open_routes_and_the_documented_scheme(fake_app) -> None:  # type: ignore[no-untyped-def]
    with fake_app(api_key="s3cret", warmup=False) as client:
        for path in ("/health", "/ready", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        schema = client.get("/openapi.json").json()
        assert {"APIKeyHeader", "HTTPBearer"} <= set(schema["components"]["securitySchemes"])
        security = schema["paths"]["/predict"]["post"]["security"]
        assert {"APIKeyHeader": []} in security and {"HTTPBearer": []} in security
        assert client.get("/nowhere").status_code == 401  # nothing to learn without the key
