"""The service's errors. Each class carries the HTTP status and the code its response shows.

    ServiceError (500 internal_error: generic body, traceback logged)
    ├── InvalidRequestError (422 invalid_request)
    │   ├── InvalidImageError (422 invalid_image): not an image, truncated, too small
    │   ├── ImageTooLargeError (413 image_too_large): more pixels than max_image_pixels
    │   ├── HeadRequiredError (422 head_required): several heads served, none named, no default
    │   ├── ExplainUnavailableError (422 explain_unavailable): ?explain=true for a head that
    │   │   cannot be explained (a multi-class SVM), or a conv base that gives no maps
    │   └── OutOfDistributionError (422 out_of_distribution): unlike the head's training images,
    │       refused because FEATCACHE_REFUSE_OOD is set
    ├── UploadTooLargeError (413 upload_too_large): body or file over the size limit
    ├── TooManyFilesError (413 too_many_files): a batch with more files than allowed
    ├── UnauthorizedError (401 unauthorized): API key missing or wrong
    ├── ForbiddenError (403 forbidden): an admin route, no API key set, a client not on loopback
    ├── UnknownHeadError (404 unknown_head)
    │   └── UnknownVersionError (404 unknown_version): the head is served, not that version
    ├── ReloadUnavailableError (409 no_heads_dir): /admin/reload with no --heads-dir to rescan
    ├── ScanBusyError (503 scan_busy, Retry-After): the heads folder has not answered in time
    ├── NotReadyError (503 not_ready, Retry-After): the model is still loading, or failed to
    └── OverloadedError (503 overloaded, Retry-After): too many images already wait for the model
        └── RequestTimeoutError (503 timeout, Retry-After): not answered within the time limit
    StartupError: a head or the weights cannot be served; raised at startup, never over HTTP
    └── HeadSpecMismatchError: a head's features were made differently from the loaded base

Every error response has the same body: {"error": {"code": ..., "message": ...}}, plus
"details" for request validation errors. A class with `retry_after_s` adds that header. Under
/v2 the same errors are rewritten on the way out to the Open Inference Protocol's
{"error": "message"}, 422 becoming 400 (service/api/middleware.py: V2ErrorMiddleware).
"""

from __future__ import annotations

from http import HTTPStatus


class ServiceError(Exception):
    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    code: str = "internal_error"
    #: Seconds a client should wait before trying again (the Retry-After header), if any.
    retry_after_s: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequestError(ServiceError):
    status = HTTPStatus.UNPROCESSABLE_ENTITY
    code = "invalid_request"


class InvalidImageError(InvalidRequestError):
    code = "invalid_image"


class ImageTooLargeError(InvalidRequestError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "image_too_large"


class OutOfDistributionError(InvalidRequestError):
    code = "out_of_distribution"


class UploadTooLargeError(ServiceError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "upload_too_large"


class TooManyFilesError(ServiceError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "too_many_files"


class UnauthorizedError(ServiceError):
    status = HTTPStatus.UNAUTHORIZED
    code = "unauthorized"


class ForbiddenError(ServiceError):
    status = HTTPStatus.FORBIDDEN
    code = "forbidden"


class HeadRequiredError(InvalidRequestError):
    code = "head_required"


class ExplainUnavailableError(InvalidRequestError):
    code = "explain_unavailable"


class UnknownHeadError(ServiceError):
    status = HTTPStatus.NOT_FOUND
    code = "unknown_head"


class UnknownVersionError(UnknownHeadError):
    code = "unknown_version"


class ReloadUnavailableError(ServiceError):
    status = HTTPStatus.CONFLICT
    code = "no_heads_dir"


class ScanBusyError(ServiceError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "scan_busy"
    retry_after_s = 10


class NotReadyError(ServiceError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "not_ready"
    retry_after_s = 5


class OverloadedError(ServiceError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "overloaded"
    #: A full queue drains in a few seconds (64 images at ~15/s on a 2-core CPU); refusals
    #: are cheap (nothing is decoded), so clients may come back soon.
    retry_after_s = 2


class RequestTimeoutError(OverloadedError):
    code = "timeout"
    retry_after_s = 5


class StartupError(RuntimeError):
    """The service cannot start with these settings; the message says what to change."""


class HeadSpecMismatchError(StartupError):
    """A head was trained on features made differently from those the loaded base makes.

    `fields` names what differs (spec field names, never values), for short status reasons.
    """

    def __init__(self, message: str, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields
