"""The Open Inference Protocol (KServe V2) over HTTP, beside /predict: same heads, feature
cache, batching, limits and API key. The protocol itself lives in service/v2_protocol.py.

Open, like /health and /ready: /v2/health/live and /v2/health/ready. Everything else under /v2
needs the API key when one is set. Errors have the protocol's body, {"error": "message"}
(service/api/middleware.py: V2ErrorMiddleware). Not ready is 503, as on /ready: the protocol only
asks for a status other than 200, and 503 is what probes and load balancers expect.

An inference body counts against the bytes in flight, with what it inflates to
(service/api/middleware.py: BodyLimitMiddleware); any but a small one is parsed on a worker
thread, never on the event loop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Request, Response

from service import v2_protocol as v2
from service.api.deps import (
    ApiKey,
    HeadStoreDep,
    PredictorDep,
    ServingPredictorDep,
    SettingsDep,
    resolve_head,
)
from service.api.middleware import BodyReservation
from service.config import Settings
from service.errors import NotReadyError
from service.heads import ServedHead

health_router = APIRouter(prefix="/v2/health", tags=["v2"])
router = APIRouter(prefix="/v2", tags=["v2"], dependencies=[ApiKey])


@health_router.get("/live", summary="V2: the server is alive")
def live() -> dict[str, bool]:
    return {"live": True}


@health_router.get("/ready", summary="V2: the model is loaded and a head is served (503 if not)")
def server_ready(predictor: ServingPredictorDep, store: HeadStoreDep) -> dict[str, bool]:
    if not len(store.current()):
        raise NotReadyError("no head can be served yet")
    return {"ready": True}


@router.get("", summary="V2: server metadata")
def server_metadata() -> dict[str, Any]:
    try:
        ours = version("featcache")
    except PackageNotFoundError:
        ours = "unknown"
    return v2.server_metadata(ours)


@router.get("/models/{name}", summary="V2: model metadata (the latest version)")
@router.get("/models/{name}/versions/{version}", summary="V2: model metadata of one version")
def model_metadata(name: str, store: HeadStoreDep, version: str | None = None) -> dict[str, Any]:
    head = resolve_head(store, name, version)
    served = [h.version_label for h in store.current().versions(name)]
    return v2.model_metadata(
        head.name, [v for v in served if v is not None], f"featcache_{head.metadata.get('kind')}",
        head.classes_, {"version": head.version_label, "feature_layer": head.spec.layer},
        guard=head.has_guard,
    )


@router.get("/models/{name}/ready", summary="V2: the model can answer now (503 if loading)")
@router.get("/models/{name}/versions/{version}/ready", summary="V2: one version can answer now")
def model_ready(name: str, store: HeadStoreDep, predictor: ServingPredictorDep,
                version: str | None = None) -> dict[str, Any]:
    resolve_head(store, name, version)
    return {"name": name, "ready": True}


@router.post("/models/{name}/infer", summary="V2: classify a batch of encoded images")
@router.post("/models/{name}/versions/{version}/infer", summary="V2: classify with one version")
async def infer(
    name: str, request: Request, predictor: PredictorDep, store: HeadStoreDep,
    settings: SettingsDep, version: str | None = None,
) -> Response:
    head: ServedHead = resolve_head(store, name, version)  # kept to the end of the request
    body = b"".join([chunk async for chunk in request.stream()])  # not kept by the request
    reservation = BodyReservation.for_scope(request.scope)
    parse = functools.partial(
        _parse, body, request.headers.get("content-encoding"),
        request.headers.get(v2.HEADER_LENGTH), settings,
        reservation.take if reservation is not None else _no_reservation)
    if len(body) <= INLINE_PARSE_BYTES and _identity(request.headers.get("content-encoding")):
        parsed = parse()  # microseconds to a millisecond: a thread would cost more
    else:
        parsed = await anyio.to_thread.run_sync(parse, limiter=_parsers(request))
    del body, parse  # the images are copies: the body's memory goes back now
    wants_guard = [o.name for o in parsed.outputs if o.name in v2.GUARD_OUTPUTS]
    if wants_guard and not head.has_guard:
        raise v2.ProtocolError(f"head {head.name!r} has no out-of-distribution guard, so no "
                               f"{', '.join(wants_guard)} output (train it with --ood)")
    predictions = await predictor.predict_all(parsed.images, head, what=v2.INPUT)
    classes = [str(c) for c in head.classes_]
    probabilities = np.array([[p.probabilities[c] for c in classes] for p in predictions],
                             dtype=np.float32)
    content, headers = v2.infer_response(
        parsed, head.name, head.version_label, probabilities, classes,
        [p.label or "" for p in predictions],
        ood_scores=[p.ood_score or 0.0 for p in predictions] if wants_guard else None,
        in_distribution=[bool(p.in_distribution) for p in predictions] if wants_guard else None)
    return Response(content, headers=headers)


#: Bodies up to this size, not compressed, are parsed on the event loop: one image and its
#: header parse in about a millisecond, less than a thread hop, and a request that is
#: parsed at once does not wait behind a large one for a worker.
INLINE_PARSE_BYTES = 256 * 1024

#: Larger /v2 bodies parsed at once, each on a worker thread. Parsing costs CPU in proportion to the
#: body (JSON, base64, copying the elements out): on the event loop a large one would stall
#: every other request, /health included. Two at a time bounds what parsing holds in memory
#: (a body, what it inflates to, its elements: ~3x max_batch_request_bytes each at most) and
#: leaves the rest of the threadpool to the routes that need it.
PARSE_CONCURRENCY = 2


def _parsers(request: Request) -> anyio.CapacityLimiter:
    """The app's parsing limiter, made on first use (it belongs to the running event loop)."""
    limiter: anyio.CapacityLimiter | None = getattr(request.app.state, "v2_parsers", None)
    if limiter is None:
        limiter = request.app.state.v2_parsers = anyio.CapacityLimiter(PARSE_CONCURRENCY)
    return limiter


def _parse(body: bytes, encoding: str | None, header_length: str | None, settings: Settings,
           reserve: Callable[[int], None]) -> v2.InferRequest:
    """Inflate (counting what it inflates to against the bytes in flight) and parse: off the
    event loop."""
    body = v2.decompress(body, encoding, settings.max_batch_request_bytes, reserve)
    return v2.parse_infer_request(body, header_length, max_images=settings.max_batch_files,
                                  max_image_bytes=settings.max_upload_bytes)


def _identity(encoding: str | None) -> bool:
    return encoding is None or encoding.strip().lower() in ("", "identity")


def _no_reservation(n: int) -> None:
    """No BodyLimitMiddleware in front (an app assembled differently): nothing to count."""
