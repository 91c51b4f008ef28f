"""Image bytes -> label and probabilities: the feature cache, the batcher and the heads together.

The inference path itself is the one every entry point shares: `extractor.pipeline` hashes the
upload, decodes it and makes its views, and `classifier.inference` turns the features into the
head's probabilities averaged over the views. What is the service's own is around it: the
upload and queue limits, the feature cache keyed by `pipeline.view_keys`, the micro-batcher
that runs the conv base on several requests' images at once, the threads that keep hashing and
decoding off the event loop, deadlines, and mapping errors to HTTP answers.

A head trained on augmented views (`classifier.views`) gets the same views of the upload as
`extract --augment K --augment-mode M` makes of a file: K+1 images through the conv base per
upload, batched together, each cached on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from starlette.concurrency import run_in_threadpool

from classifier.inference import ImageProbabilities, probabilities
from extractor import features as named
from extractor import images, pipeline
from extractor.augment import Views
from extractor.features import Features
from extractor.pipeline import sha256_of, view_keys
from service.batching import MicroBatcher, ModelWorker
from service.errors import (
    ExplainUnavailableError,
    ImageTooLargeError,
    InvalidImageError,
    OutOfDistributionError,
    OverloadedError,
    RequestTimeoutError,
    ServiceError,
    UploadTooLargeError,
)
from service.explaining import Maps, MapsRunner, explanation
from service.feature_cache import FeatureLRU
from service.heads import ServedHead
from service.metrics import Metrics

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Prediction:
    #: None when the head abstained (its confidence was below its threshold).
    label: str | None
    probabilities: dict[str, float]
    head: str
    #: The head's version that answered; None for an unversioned head.
    version: str | None
    cached: bool
    #: Images whose probabilities were averaged: 1, or 1 + the head's augmented views.
    views: int
    timings_ms: dict[str, float]
    #: With ?explain=true: {"grid": [[float]], "overlay_png": base64 PNG} (service.explaining).
    explanation: dict[str, Any] | None = None
    #: The out-of-distribution guard's score of the upload (1.0 is the threshold) and its
    #: verdict; None for a head without a guard.
    ood_score: float | None = None
    in_distribution: bool | None = None
    #: True when the head's confidence was below its abstention threshold (label None).
    abstained: bool = False


def _judge(head: ServedHead, features: Features) -> ImageProbabilities:
    """The upload's probabilities (its rows: the image, then its views), on the head's
    thread."""
    return probabilities(head, features)


def _decode(data: bytes, size: int, max_pixels: int, sha256: str, views: Views | None,
            wanted: Sequence[int]) -> list[NDArray[np.uint8]]:
    """`pipeline.decode`, its errors mapped to the service's (422 / 413 answers)."""
    try:
        return pipeline.decode(data, size, views, wanted=wanted, max_pixels=max_pixels,
                               sha256=sha256)
    except images.ImageTooLargeError as exc:
        raise ImageTooLargeError(str(exc)) from None
    except images.ImageError as exc:
        raise InvalidImageError(str(exc)) from None


class Predictor:
    """Owns the request path once the model is loaded; routes call `predict` with the head
    they resolved at the request's start (so a reload never changes it mid-request).

    Overload: an image that needs the conv base is admitted before it is decoded, and at most
    `max_queue` are admitted and not yet through their forward pass; beyond, `OverloadedError`
    (503) at once. So an accepted image waits at most ~max_queue / batch size forward passes,
    and neither the batcher's queue nor the decoders' backlog can grow without bound. Every
    request also has a deadline (`request_timeout_s`): past it, `RequestTimeoutError` (503),
    and its images still waiting for the model are dropped from the queue.
    """

    def __init__(
        self, batcher: MicroBatcher, cache: FeatureLRU[Features],
        head_worker: ModelWorker, *, decoder: ModelWorker, image_size: int,
        max_upload_bytes: int, max_image_pixels: int, max_queue: int, request_timeout_s: float,
        metrics: Metrics, tta: bool = True, maps: MapsRunner | None = None,
        refuse_ood: bool = False,
    ) -> None:
        self.batcher = batcher
        self.cache = cache
        self._head_worker = head_worker
        #: Its few threads bound the decodes running at once, so decode memory is bounded by
        #: threads x max_image_pixels x ~8 bytes however many images are in flight.
        self._decoder = decoder
        self.image_size = image_size
        self.max_upload_bytes = max_upload_bytes
        self.max_image_pixels = max_image_pixels
        self.max_queue = max_queue
        self.request_timeout_s = request_timeout_s
        #: Average over the views a head was trained on (False: each upload alone).
        self.tta = tta
        #: Refuse uploads the head's guard flags (OutOfDistributionError) instead of answering.
        self.refuse_ood = refuse_ood
        self._metrics = metrics
        #: Runs the conv base for explained requests (None: explanations are unavailable).
        self._maps = maps
        #: Images admitted and not yet through the conv base. Only the event loop touches it.
        self.waiting = 0

    def _overloaded(self) -> OverloadedError:
        return OverloadedError(
            f"the server is busy: {self.waiting} images are already waiting for the model "
            f"(the limit is {self.max_queue}); retry in a moment"
        )

    async def _identity(self, data: bytes) -> str:
        """The upload's SHA-256, once it is known to be within the size limit
        (`UploadTooLargeError` otherwise). Hashing 10 MB takes ~20 ms: too long to hold the
        event loop, so large uploads are hashed on a thread."""
        if len(data) > self.max_upload_bytes:
            raise UploadTooLargeError(
                f"upload too large: {len(data)} bytes, the limit is {self.max_upload_bytes}"
            )
        if len(data) < 256 * 1024:
            return sha256_of(data)
        return await run_in_threadpool(sha256_of, data)

    @contextlib.contextmanager
    def _admitted(self, images: int) -> Iterator[None]:
        """Count `images` as waiting for the model for the block (`OverloadedError` at once
        when the queue is already full)."""
        if self.waiting >= self.max_queue:
            raise self._overloaded()
        self.waiting += images
        self._metrics.images_waiting.set(self.waiting)
        try:
            yield
        finally:
            self.waiting -= images
            self._metrics.images_waiting.set(self.waiting)

    async def features(
        self, data: bytes, views: Views | None = None
    ) -> tuple[Features, bool, dict[str, float]]:
        """Named features of an upload, one row per image: the upload itself, then each of
        `views` (a head's `classifier.views.Views`; None or empty: the upload alone). Rows
        come from the cache when the same bytes were seen before; the others go through the
        conv base together."""
        t0 = time.perf_counter()
        key = await self._identity(data)
        keys = view_keys(key, views)
        rows: list[Features | None] = [self.cache.get(k) for k in keys]
        t1 = time.perf_counter()
        timings = {"hash": (t1 - t0) * 1000.0, "decode": 0.0, "queue": 0.0, "forward": 0.0}
        wanted = [v for v, r in enumerate(rows) if r is None]
        if not wanted:
            return named.stack(r for r in rows if r is not None), True, timings
        with self._admitted(len(wanted)):
            pixels = await self._decoder.run(_decode, data, self.image_size,
                                             self.max_image_pixels, key, views, wanted)
            timings["decode"] = (time.perf_counter() - t1) * 1000.0
            # One task per image so that they share forward passes; the first failure cancels
            # the others (their images leave the queue uncomputed) and is raised as it is.
            tasks = [asyncio.ensure_future(self.batcher.submit(px)) for px in pixels]
            try:
                results = await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                raise
        for v, (features, batch) in zip(wanted, results, strict=True):
            rows[v] = features
            self.cache.put(keys[v], features)
            timings["queue"] = max(timings["queue"], batch.queue_ms)
            timings["forward"] = max(timings["forward"], batch.forward_ms)
        return named.stack(r for r in rows if r is not None), False, timings

    async def maps(self, data: bytes, views: Views | None = None
                   ) -> tuple[Maps, Features, NDArray[np.uint8], str, dict[str, float]]:
        """For an explained request: the conv base's maps of the upload and its views, their
        named features, the upload's pixels and SHA-256. Never from the feature cache (it
        holds no maps), and outside the batcher, in one pass of its own."""
        if self._maps is None:
            raise ExplainUnavailableError("explanations are not available on this server")
        t0 = time.perf_counter()
        key = await self._identity(data)
        keys = view_keys(key, views)
        wanted = list(range(len(keys)))
        with self._admitted(len(wanted)):
            t1 = time.perf_counter()
            pixels = await self._decoder.run(_decode, data, self.image_size,
                                             self.max_image_pixels, key, views, wanted)
            t2 = time.perf_counter()
            maps, features, forward_ms = await self._maps(pixels)
        for v, k in enumerate(keys):  # a plain request for it later hits
            self.cache.put(k, named.row(features, v))
        timings = {"hash": (t1 - t0) * 1000.0, "decode": (t2 - t1) * 1000.0, "queue": 0.0,
                   "forward": forward_ms}
        return maps, features, pixels[0], key, timings

    def deadline(self) -> float:
        """When a request starting now must be answered, on the event loop's clock."""
        return asyncio.get_running_loop().time() + self.request_timeout_s

    async def predict(self, data: bytes, head: ServedHead,
                      deadline: float | None = None, explain: bool = False) -> Prediction:
        t0 = time.perf_counter()
        timeout = asyncio.timeout_at(self.deadline() if deadline is None else deadline)
        try:
            async with timeout:
                views = head.views if self.tta else None
                if explain:
                    maps, features, pixels, key, timings = await self.maps(data, views)
                    cached = False
                else:
                    features, cached, timings = await self.features(data, views)
                t1 = time.perf_counter()
                judged = await self._head_worker.run(_judge, head, features)
                explained = None
                if explain:
                    te = time.perf_counter()
                    explained = await self._head_worker.run(
                        explanation, head.model, maps, judged.rows, pixels, views, key)
                    timings["explain"] = (time.perf_counter() - te) * 1000.0
        except Exception as exc:
            error = exc
            if isinstance(exc, TimeoutError) and timeout.expired():
                error = RequestTimeoutError(
                    f"no answer within {self.request_timeout_s:g} s: the server is overloaded; "
                    "retry later"
                )
            self._metrics.predictions.labels(head.name, getattr(error, "code", "internal_error")
                                             ).inc()
            if error is exc:
                raise
            raise error from None
        t2 = time.perf_counter()
        timings["head"] = (t2 - t1) * 1000.0 - timings.get("explain", 0.0)
        timings["total"] = (t2 - t0) * 1000.0
        # The mean over the image and its views (one row without views).
        row = judged.images[0]
        classes = [str(c) for c in head.classes_]
        ood_score = None if judged.ood_scores is None else float(judged.ood_scores[0])
        in_distribution = None if ood_score is None else bool(ood_score <= 1.0)
        if ood_score is not None:
            self._metrics.observe_ood(head.name, ood_score, not in_distribution)
            if self.refuse_ood and not in_distribution:
                self._metrics.predictions.labels(head.name, OutOfDistributionError.code).inc()
                raise OutOfDistributionError(
                    f"the image is unlike the images head {head.name!r} was trained on "
                    f"(ood_score {ood_score:.3f} > 1.0, the guard's threshold); not labelled")
        abstain_below = head.abstain_below
        abstained = abstain_below is not None and float(row.max()) < abstain_below
        self._metrics.predictions.labels(head.name, "abstained" if abstained else "ok").inc()
        return Prediction(
            label=None if abstained else classes[int(np.argmax(row))],
            probabilities={c: float(p) for c, p in zip(classes, row, strict=True)},
            head=head.name,
            version=head.version_label,
            cached=cached,
            views=len(judged.rows),
            timings_ms={k: round(v, 3) for k, v in timings.items()},
            explanation=explained,
            ood_score=ood_score,
            in_distribution=in_distribution,
            abstained=abstained,
        )

    async def predict_many(
        self, uploads: Sequence[bytes | Exception], head: ServedHead, explain: bool = False,
    ) -> list[Prediction | BaseException]:
        """One result per upload, in order, all in flight at once so they share forward passes;
        a failure (or an upload that already failed) is returned in its own slot. With the queue
        already full the whole request is refused (`OverloadedError`)."""
        if self.waiting >= self.max_queue:
            raise self._overloaded()
        deadline = self.deadline()

        async def one(upload: bytes | Exception) -> Prediction:
            if isinstance(upload, Exception):
                self._metrics.predictions.labels(
                    head.name, getattr(upload, "code", "internal_error")).inc()
                raise upload
            return await self.predict(upload, head, deadline, explain)

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
