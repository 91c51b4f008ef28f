"""GET /heads: what is being served."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import ApiKey, StateDep
from service.api.schemas import HeadInfo, HeadsResponse
from service.errors import NotReadyError

router = APIRouter(tags=["heads"], dependencies=[ApiKey])


@router.get("/heads", response_model=HeadsResponse, summary="Loaded heads, metadata and metrics")
def list_heads(state: StateDep) -> HeadsResponse:
    if state.heads is None:
        raise NotReadyError("no head is loaded yet")
    return HeadsResponse(
        default=state.heads.default,
        heads=[
            HeadInfo(
                name=h.name, default=h.name == state.heads.default,
                classes=[str(c) for c in h.classes_], spec=h.spec.to_dict(),
                metrics=h.metadata.get("metrics"), metadata=h.metadata,
            )
            for h in state.heads
        ],
    )
