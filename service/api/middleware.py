"""Pure ASGI middleware: request metrics, the request body limit, the last-resort 500, and the
Open Inference Protocol's error body under /v2."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping, Sequence

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.errors import UploadTooLargeError
from service.metrics import Metrics

logger = logging.getLogger(__name__)

UNMATCHED = "<unmatched>"


class MetricsMiddleware:
    """Count requests by route template (not raw path, to bound label cardinality) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope.get("method", "")
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - started)


class BodyLimitMiddleware:
    """Refuse request bodies over a per-path limit before they are read.

    A declared Content-Length over the limit is answered 413 at once; a body sent without one
    (chunked) is counted as it streams and cut off the moment it passes the limit.
    """

    def __init__(self, app: ASGIApp, limits: Mapping[str, int],
                 patterns: Sequence[tuple[str, int]] = ()) -> None:
        self.app = app
        self.limits = dict(limits)
        #: (regular expression matching the whole path, limit): for paths with parameters.
        self.patterns = [(re.compile(pattern), limit) for pattern, limit in patterns]

    def limit_for(self, path: str) -> int | None:
        if path in self.limits:
            return self.limits[path]
        return next((limit for rx, limit in self.patterns if rx.fullmatch(path)), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit_for(scope.get("path", "")) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        too_large = UploadTooLargeError(
            f"request body too large: the limit for {scope['path']} is {limit} bytes"
        )
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await error_response(too_large)(scope, receive, send)
                    return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(too_large.message)
            return message

        await self.app(scope, counting_receive, send)


class _BodyTooLarge(StarletteHTTPException):
    """Raised mid-body; an HTTPException because FastAPI turns any other error raised while it
    parses a form into a 400, and re-raises these for the error handler."""

    def __init__(self, message: str) -> None:
        super().__init__(status_code=413, detail=message)


class CatchAllMiddleware:
    """Any exception nothing else handled: a generic 500 body, and the traceback in the log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if started:
                raise
            await error_response(exc)(scope, receive, send)


class V2ErrorMiddleware:
    """Under /v2, errors take the Open Inference Protocol's shape: {"error": "message"}.

    Every error anywhere in the app (a route, the body limit, the API key, the last-resort 500)
    is written once, in our format; this rewrites it on the way out for /v2 paths, so no error
    path needs to know which protocol it serves. 422 becomes 400, the protocol's "bad request".
    """

    def __init__(self, app: ASGIApp, prefix: str = "/v2") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == self.prefix or path.startswith(self.prefix + "/")):
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        chunks: list[bytes] = []

        async def send_wrapper(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 400 \
                    and _is_json(message):
                held = message
                return
            if held is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                status, body = _v2_error(held["status"], b"".join(chunks))
                headers = [(k, v) for k, v in held.get("headers", [])
                           if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**held, "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_wrapper)


def _is_json(message: Message) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"application/json")
               for k, v in message.get("headers", []))


def _v2_error(status: int, body: bytes) -> tuple[int, bytes]:
    try:
        error = json.loads(body)["error"]
        message = error["message"] if isinstance(error, dict) else str(error)
    except (ValueError, KeyError, TypeError):
        message = "error"
    return (400 if status == 422 else status), json.dumps({"error": message}).encode()
