"""Pure ASGI middleware: request metrics, dropping the work of clients that went away, the API
key (checked before the body is read), the request body limits (size, bytes in flight, time to
send), the last-resort 500, and the Open Inference Protocol's error body under /v2."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from http import HTTPStatus

from pydantic import SecretStr
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import check_api_key
from service.api.errors import error_response
from service.errors import OverloadedError, UnauthorizedError, UploadTooLargeError
from service.metrics import Metrics

logger = logging.getLogger(__name__)

UNMATCHED = "<unmatched>"
#: The status metrics record for a request whose client went away before its answer (nginx's).
CLIENT_CLOSED_REQUEST = 499


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
        except asyncio.CancelledError:
            status = CLIENT_CLOSED_REQUEST
            raise
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope.get("method", "")
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - started)


class DisconnectMiddleware:
    """Cancel a request's work when its client disconnects before the answer.

    Neither uvicorn nor Starlette does: a request whose client has gone runs to the end, and
    under overload the queue fills with images nobody will read. Once the app has read the
    whole body, the only message left to receive is `http.disconnect`; a watcher waits for it
    and cancels the app, and the batcher then drops the request's images that are still
    queued. The app runs as a child task so that cancelling it leaves the server's own task
    alone.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_read = asyncio.Event()
        disconnected = asyncio.Event()
        answered = False

        async def receive_wrapper() -> Message:
            if body_read.is_set():  # the app asks again after the body: wait for the watcher
                await disconnected.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
            elif not message.get("more_body", False):
                body_read.set()
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True
            await send(message)

        async def watch(task: asyncio.Task[None]) -> None:
            await body_read.wait()
            message = await receive()  # returns when the client leaves or the answer is sent
            if message["type"] == "http.disconnect":
                disconnected.set()
                if not answered:
                    task.cancel()

        task = asyncio.ensure_future(self.app(scope, receive_wrapper, send_wrapper))
        watcher = asyncio.ensure_future(watch(task))
        try:
            await task
        except asyncio.CancelledError:
            if not (task.cancelled() and disconnected.is_set()):
                raise  # the server itself is cancelling us
            logger.info("%s %s: the client disconnected before its answer; its work was dropped",
                        scope.get("method", ""), scope.get("path", ""))
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


class ApiKeyMiddleware:
    """When an API key is set, refuse requests without it from their headers alone.

    FastAPI reads and parses a request's body before any dependency runs, so a dependency that
    checks the key lets a client without one make the server take in a whole upload (64 MiB
    for a batch) first. Every path needs the key but `open_paths` (health, readiness and the
    API docs): routes added later are protected by default, and unknown paths answer 401, not
    404, to a client without the key.
    """

    def __init__(self, app: ASGIApp, api_key: SecretStr | None,
                 open_paths: Collection[str]) -> None:
        self.app = app
        self.api_key = api_key
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.api_key is None or scope["type"] != "http"
                or scope.get("path", "") in self.open_paths):
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope.get("headers", ()):
            if name == b"x-api-key":
                given = value.decode("latin-1")
                break
            if name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    given = credentials.strip()
        try:
            check_api_key(self.api_key, given)
        except UnauthorizedError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyBudget:
    """Bytes of request bodies held at once, server-wide (`max_body_bytes_in_flight`).

    The image queue counts work only once a body is read and parsed; this counts the bodies
    themselves, from their first byte. Thread-safe: /v2 parses (and inflates) off the loop.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.held + n > self.limit:
                return False
            self.held += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.held -= n


class BodyReservation:
    """One request's share of the `BodyBudget`, given back when the request ends. The /v2
    route finds it in the scope (`for_scope`) to count what a compressed body inflates to."""

    SCOPE_KEY = "featcache.body_reservation"

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.held = 0

    @classmethod
    def for_scope(cls, scope: Scope) -> BodyReservation | None:
        reservation = scope.get(cls.SCOPE_KEY)
        return reservation if isinstance(reservation, cls) else None

    def take(self, n: int) -> None:
        """Hold `n` more bytes, or raise 503 overloaded (as an HTTPException: see _Refused)."""
        if not self.budget.take(n):
            raise _Refused(HTTPStatus.SERVICE_UNAVAILABLE, _busy(self.budget).message,
                           {"Retry-After": str(OverloadedError.retry_after_s)})
        self.held += n

    def release(self) -> None:
        self.budget.give(self.held)
        self.held = 0


def _busy(budget: BodyBudget) -> OverloadedError:
    return OverloadedError(f"too many request bytes in flight (the limit is {budget.limit}, "
                           "FEATCACHE_MAX_BODY_BYTES_IN_FLIGHT); retry shortly")


class BodyLimitMiddleware:
    """Bound request bodies on the upload paths: each one's size, all of them together, and
    the time a client takes to send one.

    - Size: a declared Content-Length over the path's limit is answered 413 at once; a body
      sent without one (chunked) is counted as it streams and cut off the moment it passes.
    - Together (`budget`): a declared Content-Length is reserved before the body is read
      (503 overloaded with Retry-After when it does not fit); a chunked body is reserved
      chunk by chunk. The reservation is held until the request ends.
    - Time (`body_timeout_s`): from the headers to the body's last byte; then 408 and the
      connection closes, so a slow sender cannot hold memory and a connection for long.
    """

    def __init__(self, app: ASGIApp, limits: Mapping[str, int],
                 patterns: Sequence[tuple[str, int]] = (), budget: BodyBudget | None = None,
                 body_timeout_s: float | None = None) -> None:
        self.app = app
        self.limits = dict(limits)
        #: (regular expression matching the whole path, limit): for paths with parameters.
        self.patterns = [(re.compile(pattern), limit) for pattern, limit in patterns]
        self.budget = budget
        self.body_timeout_s = body_timeout_s

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
        declared = 0
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                declared = int(value) if value.isdigit() and len(value) <= 20 else 0
                if declared > limit:
                    await error_response(too_large)(scope, receive, send)
                    return
        reservation = BodyReservation(self.budget or BodyBudget(1 << 62))
        if declared and not reservation.budget.take(declared):
            await error_response(_busy(reservation.budget))(scope, receive, send)
            return
        reservation.held = declared
        deadline = (None if self.body_timeout_s is None
                    else asyncio.get_running_loop().time() + self.body_timeout_s)
        received = 0
        body_done = False

        async def guarded_receive() -> Message:
            nonlocal received, body_done
            if body_done or deadline is None:
                message = await receive()
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise _Refused(HTTPStatus.REQUEST_TIMEOUT,
                                   f"the request body was not received within "
                                   f"{self.body_timeout_s:g} s (FEATCACHE_BODY_TIMEOUT_S)",
                                   {"Connection": "close"}) from None
            if message["type"] == "http.request":
                chunk = len(message.get("body", b""))
                received += chunk
                body_done = not message.get("more_body", False)
                if received > limit:
                    raise _Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, too_large.message)
                if received > reservation.held:  # chunked, or more than declared
                    reservation.take(received - reservation.held)
            return message

        scope[BodyReservation.SCOPE_KEY] = reservation
        try:
            await self.app(scope, guarded_receive, send)
        finally:
            reservation.release()


class _Refused(StarletteHTTPException):
    """Raised mid-body; an HTTPException because FastAPI turns any other error raised while it
    parses a form into a 400, and re-raises these for the error handler."""

    def __init__(self, status: HTTPStatus, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)


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
