"""Injected dependencies: routes declare what they need with these `Annotated` aliases."""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import Annotated

from fastapi import Depends, Query, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from service.app_state import AppState
from service.config import Settings
from service.errors import ForbiddenError, NotReadyError, UnauthorizedError, UnknownVersionError
from service.head_store import HeadStore
from service.heads import ServedHead
from service.predictor import Predictor

logger = logging.getLogger(__name__)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.featcache
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_predictor(state: StateDep) -> Predictor:
    if state.predictor is None:
        raise NotReadyError(state.load_error or "the model is still loading; retry shortly")
    return state.predictor


PredictorDep = Annotated[Predictor, Depends(get_predictor)]


def get_serving_predictor(state: StateDep, predictor: PredictorDep) -> Predictor:
    """The predictor, when its model thread is serving requests: readiness checks. A dead
    batching task, a shut-down or stuck model thread is 503; the cause goes to the log."""
    problem = predictor.batcher.problem()
    state.metrics.ready.set(0 if problem else 1)
    if problem is not None:
        logger.warning("not ready: %s", problem)  # the details stay in the log
        raise NotReadyError("the model is not serving requests; the server log says why")
    return predictor


ServingPredictorDep = Annotated[Predictor, Depends(get_serving_predictor)]


def get_head_store(state: StateDep) -> HeadStore:
    if state.head_store is None:
        raise NotReadyError(state.load_error or "the heads are still loading; retry shortly")
    return state.head_store


HeadStoreDep = Annotated[HeadStore, Depends(get_head_store)]


def resolve_head(store: HeadStore, name: str | None, version: str | int | None) -> ServedHead:
    """The head a request names, from the snapshot current now: the request keeps this object
    to its end, whatever a reload swaps in meanwhile."""
    if isinstance(version, str):
        # Bounded: int() refuses more than 4,300 digits with a ValueError (a 500 here).
        if not (version.isascii() and version.isdigit() and len(version) <= 18):
            raise UnknownVersionError(f"version {version[:40]!r} is not a version number")
        version = int(version)
    return store.current().get(name, version)


def get_head(
    predictor: PredictorDep,
    store: HeadStoreDep,
    head: Annotated[str | None, Query(description="Head name (default: the default head)")] = None,
    version: Annotated[int | None, Query(
        ge=0, description="Head version (default: the highest served)")] = None,
) -> ServedHead:
    return resolve_head(store, head, version)


HeadDep = Annotated[ServedHead, Depends(get_head)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                               description="Needed when the server has FEATCACHE_API_KEY set")
_bearer = HTTPBearer(auto_error=False, description="The API key as a bearer token")


def check_api_key(expected: SecretStr | None, given: str | None) -> None:
    """Raise `UnauthorizedError` unless no key is configured or `given` is it."""
    if expected is None:
        return
    if not given:
        raise UnauthorizedError("an API key is required: send it in the X-API-Key header")
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise UnauthorizedError("invalid API key")


def require_api_key(
    settings: SettingsDep,
    header_key: Annotated[str | None, Security(_api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
    """When an API key is configured, the request must carry it (X-API-Key or Bearer).

    `ApiKeyMiddleware` has already refused requests without it, before reading their bodies;
    this dependency documents the schemes in the OpenAPI schema, and checks again.
    """
    check_api_key(settings.api_key,
                  header_key or (bearer.credentials if bearer is not None else None))


ApiKey = Depends(require_api_key)


def require_admin(request: Request, settings: SettingsDep) -> None:
    """Admin routes (POST /admin/reload): with an API key set, the key (checked already);
    without one, only clients on loopback.

    Loopback rather than a second, admin-only key: with no key set, the operator has chosen an
    open server, and compose's default publishes it; an open reload would let any client that
    reaches the port make the server reread the heads folder at will. On loopback only, whoever
    can reload can already send SIGHUP or run `serve` themselves. uvicorn takes the client's
    address from X-Forwarded-For only when a proxy on loopback sends it (its default
    --forwarded-allow-ips), so a proxy on the same machine does not make everyone loopback.
    """
    if settings.api_key is not None:
        return
    host = request.client.host if request.client is not None else ""
    if not _is_loopback(host):
        raise ForbiddenError(
            "admin routes answer only to clients on loopback (127.0.0.1, ::1) when no API key "
            "is set: run it on the server's machine, send serve SIGHUP, or set "
            "FEATCACHE_API_KEY")


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # not an address: a Unix socket's peer, a test client's name
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


AdminAccess = Depends(require_admin)
