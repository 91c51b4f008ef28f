"""Liveness and readiness: open to all, API key or not (orchestrators poll them)."""

from __future__ import annotations

import time

from fastapi import APIRouter

from service.api.deps import HeadStoreDep, ServingPredictorDep, StateDep
from service.api.schemas import ErrorResponse, Health, Readiness
from service.errors import NotReadyError

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="The process is alive")
async def health() -> Health:
    # On the event loop: never queued behind the threadpool (blocking work waits there).
    return Health(status="ok")


@router.get(
    "/ready", response_model=Readiness,
    summary="The model is loaded and warmed up, and a head is served",
    responses={503: {"model": ErrorResponse,
                     "description": "Still loading, failed to, not serving, or no head yet"}},
)
def ready(state: StateDep, predictor: ServingPredictorDep, store: HeadStoreDep) -> Readiness:
    registry = store.current()
    if not len(registry):
        raise NotReadyError("no head can be served yet (see GET /heads)")
    return Readiness(status="ready", heads=registry.names,
                     uptime_s=round(time.time() - state.started_at, 3))
