"""Liveness and readiness: open to all, API key or not (orchestrators poll them)."""

from __future__ import annotations

import time

from fastapi import APIRouter

from service.api.deps import PredictorDep, StateDep
from service.api.schemas import ErrorResponse, Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="The process is alive")
def health() -> Health:
    return Health(status="ok")


@router.get(
    "/ready", response_model=Readiness, summary="The model is loaded and warmed up",
    responses={503: {"model": ErrorResponse, "description": "Still loading, or failed to"}},
)
def ready(state: StateDep, predictor: PredictorDep) -> Readiness:
    return Readiness(status="ready", heads=[h.name for h in predictor.heads],
                     uptime_s=round(time.time() - state.started_at, 3))
