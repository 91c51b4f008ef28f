"""Response models: what the API promises its clients (and what /docs shows)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_image")
    message: str = Field(description="What went wrong, for a human")
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class PredictionResponse(BaseModel):
    label: str
    probabilities: dict[str, float] = Field(description="Class name -> probability")
    head: str
    cached: bool = Field(description="True when the features came from the feature cache")
    timings_ms: dict[str, float] = Field(
        description="hash, decode, queue (waiting for a batch), forward, head and total"
    )


class BatchItem(BaseModel):
    """One file's result: the prediction fields, or `error` when that file failed."""

    index: int
    filename: str | None = None
    label: str | None = None
    probabilities: dict[str, float] | None = None
    cached: bool | None = None
    timings_ms: dict[str, float] | None = None
    error: ErrorDetail | None = None


class BatchResponse(BaseModel):
    head: str
    succeeded: int
    failed: int
    results: list[BatchItem]


class HeadInfo(BaseModel):
    name: str
    default: bool
    classes: list[str]
    spec: dict[str, Any]
    metrics: dict[str, Any] | None = Field(
        default=None, description="Evaluation metrics recorded at training time, when present"
    )
    metadata: dict[str, Any]


class HeadsResponse(BaseModel):
    default: str
    heads: list[HeadInfo]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    heads: list[str]
    uptime_s: float
