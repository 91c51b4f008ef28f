"""The Open Inference Protocol (KServe V2) over HTTP, beside /predict: same heads, feature
cache, batching, limits and API key. The protocol itself lives in service/v2_protocol.py.

Open, like /health and /ready: /v2/health/live and /v2/health/ready. Everything else under /v2
needs the API key when one is set. Errors have the protocol's body, {"error": "message"}
(service/api/middleware.py: V2ErrorMiddleware). Not ready is 503, as on /ready: the protocol only
asks for a status other than 200, and 503 is what probes and load balancers expect.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

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
    body = v2.decompress(await request.body(), request.headers.get("content-encoding"),
                         settings.max_batch_request_bytes)
    parsed = v2.parse_infer_request(body, request.headers.get(v2.HEADER_LENGTH),
                                    max_images=settings.max_batch_files,
                                    max_image_bytes=settings.max_upload_bytes)
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
