"""GET /metrics: Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import ApiKey, StateDep

router = APIRouter(tags=["metrics"], dependencies=[ApiKey])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
