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


class Explanation(BaseModel):
    grid: list[list[float]] = Field(
        description="Each pixel's contribution to the predicted class's score, on the image "
        "as the model saw it (input size x input size; positive: for the class)")
    overlay_png: str = Field(description="The image with the heatmap over it, base64 PNG")


class PredictionResponse(BaseModel):
    label: str | None = Field(description="The predicted class; null when the head abstained")
    probabilities: dict[str, float] = Field(description="Class name -> probability")
    head: str
    version: str | None = Field(
        default=None, description="The head version that answered; null for an unversioned head"
    )
    cached: bool = Field(description="True when the features came from the feature cache")
    views: int = Field(
        default=1, description="Images whose probabilities were averaged: 1, or 1 + the "
        "augmented views a head trained on them averages over"
    )
    timings_ms: dict[str, float] = Field(
        description="hash, decode, queue (waiting for a batch), forward, head and total "
        "(and explain, with ?explain=true)"
    )
    explanation: Explanation | None = Field(
        default=None, description="With ?explain=true: where the prediction came from")
    ood_score: float | None = Field(
        default=None, description="Out-of-distribution score of the image: the guard's "
        "distance over its threshold (above 1.0: unlike the training images); null for a head "
        "without a guard")
    in_distribution: bool | None = Field(
        default=None, description="ood_score <= 1.0; null for a head without a guard")
    abstained: bool = Field(
        default=False, description="True when the head's confidence was below its abstention "
        "threshold (train-head --target-accuracy): label is then null")


class BatchItem(BaseModel):
    """One file's result: the prediction fields, or `error` when that file failed."""

    index: int
    filename: str | None = None
    label: str | None = None
    probabilities: dict[str, float] | None = None
    cached: bool | None = None
    views: int | None = None
    timings_ms: dict[str, float] | None = None
    explanation: Explanation | None = None
    ood_score: float | None = None
    in_distribution: bool | None = None
    abstained: bool | None = None
    error: ErrorDetail | None = None


class BatchResponse(BaseModel):
    head: str
    version: str | None = None
    succeeded: int
    failed: int
    results: list[BatchItem]


class VersionInfo(BaseModel):
    version: str | None = Field(description="null for an unversioned head")
    status: str = Field(description="loading, available or failed")
    reason: str | None = Field(default=None, description="Why it is loading or failed")
    served: bool = Field(description="Requests can reach this version now")


class HeadInfo(BaseModel):
    name: str
    default: bool
    version: str | None = Field(
        default=None, description="The version a request without one gets (null: unversioned)"
    )
    source: str = Field(description="'head' (a --head folder) or 'heads_dir' (watched)")
    versions: list[VersionInfo] = Field(default_factory=list)
    classes: list[str]
    spec: dict[str, Any]
    metrics: dict[str, Any] | None = Field(
        default=None, description="Evaluation metrics recorded at training time, when present"
    )
    metadata: dict[str, Any]


class UnservedHead(BaseModel):
    """A head folder in the watched folder with no version that can be served."""

    name: str
    versions: list[VersionInfo]


class HeadsResponse(BaseModel):
    default: str | None = Field(description="The head a request without ?head= gets, if any")
    heads: list[HeadInfo]
    unserved: list[UnservedHead] = Field(
        default_factory=list, description="Head folders in --heads-dir that cannot be served"
    )


class ReloadResponse(BaseModel):
    changes: list[dict[str, Any]] = Field(
        description="One entry per change: head, version, change (added, replaced, removed, "
        "failed, loading) and reason"
    )
    heads: HeadsResponse


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    heads: list[str]
    uptime_s: float
