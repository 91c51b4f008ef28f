"""Micro-batching: concurrent requests' images gathered into one forward pass of the conv base.

One worker thread owns the model: it is built there, warmed there, and every forward pass runs
there, so the model is never called from two threads and the event loop never blocks on it.
An asyncio task on the event loop collects queued images into batches:

- it sleeps until at least one image is queued;
- if fewer than `max_batch_size` are queued it waits up to `max_wait_ms` for more (cut short
  the moment the batch is full);
- it takes up to `max_batch_size` images, runs them as one batch on the model thread, and hands
  each request its own row.

While a forward pass runs, new requests keep queueing, so under load batches fill by themselves
even with `max_wait_ms=0`; the wait only matters for requests arriving close together at idle.

An image whose request is cancelled before its forward pass (the client disconnected, or the
request timed out) leaves the queue at once. How many images may wait is bounded upstream, by
`Predictor`, which admits images before decoding them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from extractor import features as named
from extractor.features import Features
from extractor.pipeline import FeatureFn
from service.errors import NotReadyError
from service.metrics import Metrics

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass
class BatchTimings:
    queue_ms: float
    forward_ms: float
    batch_size: int


@dataclasses.dataclass
class _Item:
    pixels: NDArray[np.uint8]
    future: asyncio.Future[tuple[Features, BatchTimings]]
    queued_at: float


class ModelWorker:
    """The one thread that owns the model; `run` hands it work from the event loop.

    With `threads` > 1 it is a small pool for other blocking work (decoding uploads), whose
    size bounds how much of that work runs at once, whatever the number of requests.
    """

    def __init__(self, threads: int = 1, name: str = "featcache-model") -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self.closed = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        self.closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)


class MicroBatcher:
    """Queue single images; get back their features, computed in shared forward passes.

    Any failure while running a batch (the forward pass, a wrong number of rows, anything after)
    fails that batch's requests and nothing else: the batching task carries on. Should the task
    end anyway, the requests still queued fail at once rather than wait forever, and `problem`
    says so, as it does for a model thread stuck in one forward pass for longer than `stall_s`.
    """

    def __init__(
        self, fn: FeatureFn, worker: ModelWorker, *, max_batch_size: int, max_wait_ms: float,
        metrics: Metrics, stall_s: float = 60.0,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1; got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0; got {max_wait_ms}")
        self._fn = fn
        self._worker = worker
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self._metrics = metrics
        self._pending: collections.deque[_Item] = collections.deque()
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.stall_s = stall_s
        #: When the forward pass now running started (perf_counter); None between passes.
        self._busy_since: float | None = None
        #: Forward passes run and images through them since start (tests and benchmarks read these).
        self.forward_passes = 0
        self.images = 0

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")
            self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The batching task ended: by `stop`, or else unexpectedly (then fail who waits)."""
        if self._stopping:
            return
        error = None if task.cancelled() else task.exception()
        logger.error("the batching task ended unexpectedly; failing %d queued images",
                     len(self._pending), exc_info=error)
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(NotReadyError("the model is not serving"))

    def problem(self) -> str | None:
        """Why this batcher cannot serve now (for the log, not for clients), or None."""
        if self._task is None or self._task.done():
            return "the batching task is not running"
        if self._worker.closed:
            return "the model thread has been shut down"
        busy_since = self._busy_since
        if busy_since is not None and time.perf_counter() - busy_since > self.stall_s:
            return (f"the model thread is stuck: one forward pass has run for "
                    f"{time.perf_counter() - busy_since:.1f} s (the limit is {self.stall_s:g} s)")
        return None

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.cancel()

    async def submit(self, pixels: NDArray[np.uint8]) -> tuple[Features, BatchTimings]:
        """Named features of one (H, W, 3) uint8 image (arrays of one row each), and how long
        it queued and computed."""
        if self._task is None or self._task.done():
            raise NotReadyError("the model is not serving")
        loop = asyncio.get_running_loop()
        item = _Item(pixels, loop.create_future(), time.perf_counter())
        # A request cancelled while its image waits (its client went away, or it timed out)
        # takes the image out of the queue at once: it is never computed, and frees its place.
        item.future.add_done_callback(lambda f: self._discard(item) if f.cancelled() else None)
        self._pending.append(item)
        self._wakeup.set()
        if len(self._pending) >= self.max_batch_size:
            self._full.set()
        return await item.future

    def _discard(self, item: _Item) -> None:
        with contextlib.suppress(ValueError):  # already taken into a batch
            self._pending.remove(item)

    async def _loop(self) -> None:
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            if len(self._pending) < self.max_batch_size and self.max_wait_s > 0:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.max_wait_s)
            batch: list[_Item] = []
            while self._pending and len(batch) < self.max_batch_size:
                item = self._pending.popleft()
                if not item.future.cancelled():  # its client went away
                    batch.append(item)
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Item]) -> None:
        """Run one batch and answer its requests; never raises (but for cancellation)."""
        started = self._busy_since = time.perf_counter()
        try:
            features = await self._worker.run(self._fn, np.stack([it.pixels for it in batch]))
            self._busy_since = None
            n = named.rows(features)
            if n != len(batch):
                raise RuntimeError(f"the conv base returned {n} rows for {len(batch)} images")
            forward_s = time.perf_counter() - started
            self.forward_passes += 1
            self.images += len(batch)
            self._metrics.forward_batch_size.observe(len(batch))
            self._metrics.forward_seconds.observe(forward_s)
            for i, it in enumerate(batch):
                if not it.future.done():
                    timings = BatchTimings((started - it.queued_at) * 1000.0,
                                           forward_s * 1000.0, len(batch))
                    it.future.set_result((named.row(features, i), timings))
        except Exception as exc:
            logger.exception("a batch of %d images failed", len(batch))
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(exc)
        finally:
            self._busy_since = None
