"""POST /predict and /predict/batch."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Query, UploadFile

from service.api.deps import ApiKey, HeadDep, PredictorDep, SettingsDep, StateDep
from service.api.errors import describe
from service.api.schemas import (
    BatchItem,
    BatchResponse,
    ErrorDetail,
    ErrorResponse,
    PredictionResponse,
)
from service.errors import ServiceError, TooManyFilesError, UploadTooLargeError

router = APIRouter(tags=["predict"], dependencies=[ApiKey])

#: ?explain=true: each prediction also says where in the image it came from.
Explain = Annotated[bool, Query(description="Add a heatmap of where the prediction came from: "
                                "explanation.grid (per pixel of the model's input) and "
                                "explanation.overlay_png (base64 PNG)")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (401, "API key missing or wrong"),
        (404, "Unknown head or version"),
        (413, "Upload too large, or an image with too many pixels"),
        (422, "No file, not a usable image, or (with refuse_ood) out of distribution"),
        (503, "Not loaded yet, the queue is full, or no answer in time (see Retry-After)"),
    )
}


async def _read(upload: UploadFile, limit: int) -> bytes:
    """The upload's bytes, refusing files over the limit without reading them whole."""
    if upload.size is not None and upload.size > limit:
        raise UploadTooLargeError(
            f"{upload.filename or 'upload'} is too large: {upload.size} bytes, the limit is {limit}"
        )
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise UploadTooLargeError(
            f"{upload.filename or 'upload'} is too large: the limit is {limit} bytes"
        )
    return data


@router.post("/predict", response_model=PredictionResponse, responses=_ERRORS,
             summary="Classify one image")
async def predict(
    file: Annotated[UploadFile, File(description="The image (JPEG, PNG, ...)")],
    predictor: PredictorDep, head: HeadDep, settings: SettingsDep, explain: Explain = False,
) -> PredictionResponse:
    data = await _read(file, settings.max_upload_bytes)
    result = await predictor.predict(data, head, explain=explain)
    return PredictionResponse(**vars(result))


@router.post("/predict/batch", response_model=BatchResponse, responses=_ERRORS,
             summary="Classify several images; a bad one fails only its own entry")
async def predict_batch(
    files: Annotated[list[UploadFile], File(description="The images, in order")],
    predictor: PredictorDep, head: HeadDep, settings: SettingsDep, state: StateDep,
    explain: Explain = False,
) -> BatchResponse:
    if len(files) > settings.max_batch_files:
        raise TooManyFilesError(
            f"too many files: {len(files)}, the limit is {settings.max_batch_files} per request"
        )
    state.metrics.request_files.observe(len(files))
    uploads: list[bytes | ServiceError] = []
    for f in files:
        try:
            uploads.append(await _read(f, settings.max_upload_bytes))
        except ServiceError as exc:
            uploads.append(exc)
    outcomes = await predictor.predict_many(uploads, head, explain=explain)
    items = []
    for i, (f, outcome) in enumerate(zip(files, outcomes, strict=True)):
        if isinstance(outcome, BaseException):
            error = ErrorDetail.model_validate(describe(outcome)[1]["error"])
            items.append(BatchItem(index=i, filename=f.filename, error=error))
        else:
            items.append(BatchItem(index=i, filename=f.filename, **vars(outcome)))
    failed = sum(item.error is not None for item in items)
    return BatchResponse(head=head.name, version=head.version_label,
                         succeeded=len(items) - failed, failed=failed, results=items)
