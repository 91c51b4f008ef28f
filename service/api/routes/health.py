"""Liveness and readiness: open to all, API key or not (orchestrators poll them)."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter

from service.api.deps import PredictorDep, StateDep
from service.api.schemas import ErrorResponse, Health, Readiness
from service.errors import NotReadyError

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="The process is alive")
def health() -> Health:
    return Health(status="ok")


@router.get(
    "/ready", response_model=Readiness, summary="The model is loaded and warmed up",
    responses={503: {"model": ErrorResponse,
                     "description": "Still loading, failed to, or the model is not serving"}},
)
def ready(state: StateDep, predictor: PredictorDep) -> Readiness:
    problem = predictor.batcher.problem()
    state.metrics.ready.set(0 if problem else 1)
    if problem is not None:
        logger.warning("not ready: %s", problem)  # the details stay in the log
        raise NotReadyError("the model is not serving requests; the server log says why")
    return Readiness(status="ready", heads=[h.name for h in predictor.heads],
                     uptime_s=round(time.time() - state.started_at, 3))
