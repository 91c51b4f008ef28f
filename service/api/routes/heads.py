"""GET /heads: what is being served."""

from __future__ import annotations

import ntpath
import posixpath
from pathlib import PurePath
from typing import Any

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
                metrics=h.metadata.get("metrics"), metadata=_public(h.metadata),
            )
            for h in state.heads
        ],
    )


def _public(value: Any) -> Any:
    """Metadata as clients see it: absolute paths (where the head was trained: folders, user
    names) cut to their file names, which say what was used without saying where. The
    metadata file keeps them whole."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_public(v) for v in value]
    if isinstance(value, str) and (posixpath.isabs(value) or ntpath.isabs(value)):
        return PurePath(value.replace("\\", "/")).name
    return value
