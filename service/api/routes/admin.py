"""POST /admin/reload: rescan the heads folder now (as the timer and SIGHUP do).

The API key when one is set; without one, loopback clients only (service/api/deps.py:
require_admin says why)."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import AdminAccess, ApiKey, HeadStoreDep
from service.api.routes.heads import heads_view
from service.api.schemas import ErrorResponse, ReloadResponse
from service.errors import ReloadUnavailableError

router = APIRouter(tags=["admin"], dependencies=[ApiKey, AdminAccess])


@router.post(
    "/admin/reload", response_model=ReloadResponse,
    summary="Rescan --heads-dir: load new and changed versions, drop removed ones",
    responses={403: {"model": ErrorResponse,
                     "description": "No API key is set and the client is not on loopback"},
               409: {"model": ErrorResponse, "description": "No --heads-dir is watched"},
               503: {"model": ErrorResponse,
                     "description": "The heads folder did not answer in time (scan_busy)"}},
)
async def reload_heads(store: HeadStoreDep) -> ReloadResponse:
    if not store.watching:
        raise ReloadUnavailableError(
            "no heads folder is watched: --head heads are fixed; serve --heads-dir DIR to add, "
            "replace and remove heads while serving"
        )
    # On the store's scanning thread (a folder that blocks holds that thread, not ours);
    # reloads asked for meanwhile share the next scan.
    changes = await store.rescan()
    return ReloadResponse(changes=[c.to_dict() for c in changes], heads=heads_view(store))
