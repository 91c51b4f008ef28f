"""The one error format, and the handlers that map every error onto it."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ServiceError

logger = logging.getLogger(__name__)

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "upload_too_large",
    401: "unauthorized",
    408: "body_timeout",
    503: "overloaded",
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


def describe(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str] | None]:
    """(status, body, headers) for any exception; only deliberate messages reach the client."""
    if isinstance(exc, ServiceError) and exc.status != HTTPStatus.INTERNAL_SERVER_ERROR:
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
        return exc.status, error_body(exc.code, exc.message), headers
    if isinstance(exc, StarletteHTTPException):
        status = HTTPStatus(exc.status_code)
        code = _HTTP_CODES.get(status, status.phrase.lower().replace(" ", "_"))
        message = exc.detail if isinstance(exc.detail, str) else status.phrase
        return status, error_body(code, message), getattr(exc, "headers", None)
    if isinstance(exc, RequestValidationError):
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        message = "; ".join(f"{'.'.join(str(p) for p in d['loc'])}: {d['msg']}" for d in details)
        return (HTTPStatus.UNPROCESSABLE_ENTITY,
                error_body("validation_error", message or "invalid request", details), None)
    logger.error("unexpected error", exc_info=(type(exc), exc, exc.__traceback__))
    return (HTTPStatus.INTERNAL_SERVER_ERROR,
            error_body("internal_error", "internal server error"), None)


def error_response(exc: BaseException) -> JSONResponse:
    status, body, headers = describe(exc)
    return JSONResponse(body, status_code=status, headers=headers)


async def _handler(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the framework raises through `error_response`.

    Unexpected exceptions are caught by `CatchAllMiddleware` rather than an `Exception`
    handler, which Starlette would re-raise after answering.
    """
    for exc_class in (ServiceError, StarletteHTTPException, RequestValidationError):
        app.add_exception_handler(exc_class, _handler)
