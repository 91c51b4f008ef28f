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
from service.errors import ImageTooLargeError, InvalidImageError, UploadTooLargeError
from service.feature_cache import FeatureLRU
from service.heads import Head, HeadRegistry
from service.metrics import Metrics

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]
    head: str
    cached: bool
    timings_ms: dict[str, float]


def _decode(data: bytes, size: int, max_pixels: int) -> NDArray[np.uint8]:
    try:
        return images.decode_image(data, size, max_pixels=max_pixels)
    except images.ImageTooLargeError as exc:
        raise ImageTooLargeError(str(exc)) from None
    except images.ImageError as exc:
        raise InvalidImageError(str(exc)) from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Predictor:
    """Owns the request path once the model is loaded; routes call `predict`."""

    def __init__(
        self, heads: HeadRegistry, batcher: MicroBatcher, cache: FeatureLRU,
        head_worker: ModelWorker, *, decoder: ModelWorker, image_size: int,
        max_upload_bytes: int, max_image_pixels: int, metrics: Metrics,
    ) -> None:
        self.heads = heads
        self.batcher = batcher
        self.cache = cache
        self._head_worker = head_worker
        #: Its few threads bound the decodes running at once, so decode memory is bounded by
        #: threads x max_image_pixels x ~8 bytes however many images are in flight.
        self._decoder = decoder
        self.image_size = image_size
        self.max_upload_bytes = max_upload_bytes
        self.max_image_pixels = max_image_pixels
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
        pixels = await self._decoder.run(_decode, data, self.image_size, self.max_image_pixels)
        timings["decode"] = (time.perf_counter() - t1) * 1000.0
        features, batch = await self.batcher.submit(pixels)
        timings["queue"] = batch.queue_ms
        timings["forward"] = batch.forward_ms
        self.cache.put(key, features)
        return features, False, timings

    async def predict(self, data: bytes, head: Head) -> Prediction:
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
            cached=cached,
            timings_ms={k: round(v, 3) for k, v in timings.items()},
        )

    async def predict_many(
        self, uploads: Sequence[bytes | Exception], head: Head
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
