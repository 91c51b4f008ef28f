"""Image bytes -> label and probabilities: the feature cache, the batcher and the heads together."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from starlette.concurrency import run_in_threadpool

from extractor import images
from service.batching import MicroBatcher, ModelWorker
from service.errors import (
    ImageTooLargeError,
    InvalidImageError,
    ServiceError,
    UploadTooLargeError,
)
from service.feature_cache import FeatureLRU
from service.heads import ServedHead
from service.metrics import Metrics

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]
    head: str
    #: The head's version that answered; None for an unversioned head.
    version: str | None
    cached: bool
    timings_ms: dict[str, float]


def _decode(data: bytes, size: int) -> NDArray[np.uint8]:
    try:
        return images.decode_image(data, size)
    except images.ImageTooLargeError as exc:
        raise ImageTooLargeError(str(exc)) from None
    except images.ImageError as exc:
        raise InvalidImageError(str(exc)) from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Predictor:
    """Owns the request path once the model is loaded; routes call `predict` with the head
    they resolved at the request's start (so a reload never changes it mid-request)."""

    def __init__(
        self, batcher: MicroBatcher, cache: FeatureLRU,
        head_worker: ModelWorker, *, image_size: int, max_upload_bytes: int, metrics: Metrics,
    ) -> None:
        self.batcher = batcher
        self.cache = cache
        self._head_worker = head_worker
        self.image_size = image_size
        self.max_upload_bytes = max_upload_bytes
        self._metrics = metrics

    async def features(self, data: bytes) -> tuple[NDArray[np.float32], bool, dict[str, float]]:
        """Features of an upload, from the cache when the same bytes were seen before."""
        if len(data) > self.max_upload_bytes:
            raise UploadTooLargeError(
                f"upload too large: {len(data)} bytes, the limit is {self.max_upload_bytes}"
            )
        t0 = time.perf_counter()
        # Hashing 10 MB takes ~20 ms: too long to hold the event loop.
        key = _sha256(data) if len(data) < 256 * 1024 else await run_in_threadpool(_sha256, data)
        cached = self.cache.get(key)
        t1 = time.perf_counter()
        timings = {"hash": (t1 - t0) * 1000.0, "decode": 0.0, "queue": 0.0, "forward": 0.0}
        if cached is not None:
            return cached, True, timings
        pixels = await run_in_threadpool(_decode, data, self.image_size)
        timings["decode"] = (time.perf_counter() - t1) * 1000.0
        features, batch = await self.batcher.submit(pixels)
        timings["queue"] = batch.queue_ms
        timings["forward"] = batch.forward_ms
        self.cache.put(key, features)
        return features, False, timings

    async def predict(self, data: bytes, head: ServedHead) -> Prediction:
        t0 = time.perf_counter()
        try:
            features, cached, timings = await self.features(data)
            t1 = time.perf_counter()
            proba = await self._head_worker.run(head.predict_proba, features[np.newaxis])
        except Exception as exc:
            outcome = getattr(exc, "code", "internal_error")
            self._metrics.predictions.labels(head.name, outcome).inc()
            raise
        t2 = time.perf_counter()
        timings["head"] = (t2 - t1) * 1000.0
        timings["total"] = (t2 - t0) * 1000.0
        row = np.asarray(proba, dtype=np.float64)[0]
        classes = [str(c) for c in head.classes_]
        self._metrics.predictions.labels(head.name, "ok").inc()
        return Prediction(
            label=classes[int(np.argmax(row))],
            probabilities={c: float(p) for c, p in zip(classes, row, strict=True)},
            head=head.name,
            version=head.version_label,
            cached=cached,
            timings_ms={k: round(v, 3) for k, v in timings.items()},
        )

    async def predict_many(
        self, uploads: Sequence[bytes | Exception], head: ServedHead
    ) -> list[Prediction | BaseException]:
        """One result per upload, in order, all in flight at once so they share forward passes;
        a failure (or an upload that already failed) is returned in its own slot."""

        async def one(upload: bytes | Exception) -> Prediction:
            if isinstance(upload, Exception):
                self._metrics.predictions.labels(
                    head.name, getattr(upload, "code", "internal_error")).inc()
                raise upload
            return await self.predict(upload, head)

        return await asyncio.gather(*(one(u) for u in uploads), return_exceptions=True)

    async def predict_all(self, uploads: Sequence[bytes], head: ServedHead,
                          what: str = "image") -> list[Prediction]:
        """Every upload's prediction, or the first failure, its message naming the element
        (`what`[i]): for protocols where one bad image fails the request."""
        outcomes = await self.predict_many(uploads, head)
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, ServiceError):
                raise type(outcome)(f"{what}[{i}]: {outcome.message}") from outcome
            if isinstance(outcome, BaseException):
                raise outcome
        return [o for o in outcomes if isinstance(o, Prediction)]
