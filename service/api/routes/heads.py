"""GET /heads: what is being served, and the state of every version in the heads folder."""

from __future__ import annotations

import ntpath
import posixpath
from pathlib import PurePath
from typing import Any

from fastapi import APIRouter

from service.api.deps import ApiKey, HeadStoreDep
from service.api.schemas import HeadInfo, HeadsResponse, UnservedHead, VersionInfo
from service.head_store import HeadStore

router = APIRouter(tags=["heads"], dependencies=[ApiKey])


@router.get("/heads", response_model=HeadsResponse,
            summary="Served heads, their versions, metadata and metrics")
def list_heads(store: HeadStoreDep) -> HeadsResponse:
    return heads_view(store)


def heads_view(store: HeadStore) -> HeadsResponse:
    """Served heads (each name's latest version) and the folder's unservable ones; statuses
    carry short reasons, never paths or exception text."""
    registry = store.current()
    versions: dict[str, list[VersionInfo]] = {}
    for s in store.statuses():
        versions.setdefault(s.name, []).append(VersionInfo(
            version=None if s.version is None else str(s.version), status=s.status,
            reason=s.reason, served=s.served))
    heads = [
        HeadInfo(
            name=h.name, default=h.name == registry.default, version=h.version_label,
            source="head" if h.fixed else "heads_dir", versions=versions.get(h.name, []),
            classes=[str(c) for c in h.classes_], spec=h.spec.to_dict(),
            metrics=h.metadata.get("metrics"), metadata=_public(h.metadata),
        )
        for h in registry
    ]
    unserved = [UnservedHead(name=name, versions=vs) for name, vs in versions.items()
                if name not in registry]
    return HeadsResponse(default=registry.default, heads=heads, unserved=unserved)


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
