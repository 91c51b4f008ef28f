"""The FastAPI application: built by `create_app`, loaded in its lifespan, never at import time.

Start-up runs in two steps. Synchronously, before the port opens: the heads are loaded and
checked against the spec of the features the configured weights make, so a wrong head or weights
file stops the server with a clear message. Then, in the background on the model's own thread:
the conv base is built and warmed up; `/health` answers meanwhile and `/ready` says 503 until it
is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI
from numpy.typing import NDArray
from starlette.concurrency import run_in_threadpool

from extractor.spec import FeatureSpec
from extractor.weights import WeightsError
from service.api.errors import install_error_handlers
from service.api.middleware import BodyLimitMiddleware, CatchAllMiddleware, MetricsMiddleware
from service.api.routes import heads, health, metrics, predict
from service.app_state import AppState
from service.batching import MicroBatcher, ModelWorker
from service.config import Settings
from service.errors import StartupError
from service.feature_cache import FeatureLRU
from service.heads import Head, HeadRegistry, check_heads, load_heads
from service.metrics import Metrics
from service.predictor import Predictor

logger = logging.getLogger(__name__)


class Backbone(Protocol):
    spec: FeatureSpec

    def __call__(self, pixels: NDArray[np.uint8]) -> NDArray[np.float32]: ...


#: Builds the conv base: (weights path, image size, layer, the spec it must have: precision and
#: int8 model included) -> backbone. Runs on the model thread.
BackboneFactory = Callable[[Path, int, str, FeatureSpec], Backbone]


class _MainMaps:
    """The conv base seen as maps of its main layer (what the served heads read today)."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self.spec: FeatureSpec = base.spec

    def __call__(self, pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
        maps: NDArray[np.float32] = self.base(pixels)[self.spec.layer]
        return maps


def conv_base_factory(weights_path: Path, image_size: int, layer: str,
                      expected: FeatureSpec) -> Backbone:
    from extractor.backbone import ConvBase

    return _MainMaps(ConvBase(weights_path, image_size=image_size, layer=layer,
                              precision=expected.precision,
                              quantized_sha256=expected.quantized_sha256 or None))


def _expected_spec(settings: Settings, heads: list[Head]) -> tuple[Path, FeatureSpec]:
    """The weights file, and the spec the base will have, found without building it.

    int8: the int8 model that made the first head's features, found by its hash (or this
    machine's own when it hashes the same); `StartupError` says which file to copy otherwise.
    """
    import dataclasses

    from extractor.backbone import make_spec
    from extractor.runtimes.int8 import Int8Error
    from extractor.weights import resolve_weights

    weights_path = resolve_weights(settings.weights)
    first = heads[0].spec
    if settings.precision == "int8" and first.precision == "int8":
        try:
            spec = make_spec(weights_path, first.layer, first.input_size, runtime="onnxruntime",
                             precision="int8", quantized_sha256=first.quantized_sha256)
        except Int8Error as exc:
            raise StartupError(f"cannot serve head {heads[0].name!r} with --precision int8: "
                               f"{exc}") from None
        return weights_path, spec
    spec = make_spec(weights_path, first.layer, first.input_size)
    # No int8 model is built for a head that will be refused anyway (check_heads names the
    # precision that differs).
    return weights_path, dataclasses.replace(spec, precision=settings.precision)


def create_app(
    settings: Settings | None = None,
    *,
    backbone_factory: BackboneFactory = conv_base_factory,
    on_load_failure: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The app for these settings. `backbone_factory` lets tests serve a fake conv base;
    `on_load_failure` lets the CLI stop the server when the model cannot be built."""
    settings = settings or Settings()
    state = AppState(settings=settings, metrics=Metrics())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            heads = await run_in_threadpool(load_heads, settings.heads)
            weights_path, expected = await run_in_threadpool(_expected_spec, settings, heads)
            check_heads(heads, expected)
        except (StartupError, WeightsError) as exc:
            logger.error("cannot start: %s", exc)
            raise
        state.heads = HeadRegistry(heads)

        model_worker, head_worker = ModelWorker(), ModelWorker()
        loading = asyncio.create_task(
            _load(heads, weights_path, expected, model_worker, head_worker), name="load-model"
        )
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            if state.predictor is not None:
                await state.predictor.batcher.stop()
            state.predictor = None
            state.metrics.ready.set(0)
            await run_in_threadpool(model_worker.shutdown)
            await run_in_threadpool(head_worker.shutdown)

    async def _load(
        heads: list[Head], weights_path: Path, expected: FeatureSpec, model_worker: ModelWorker,
        head_worker: ModelWorker,
    ) -> None:
        try:
            t0 = time.perf_counter()
            backbone = await model_worker.run(
                backbone_factory, weights_path, expected.input_size, expected.layer, expected
            )
            check_heads(heads, backbone.spec)
            batcher = MicroBatcher(
                backbone, model_worker, max_batch_size=settings.max_batch_size,
                max_wait_ms=settings.max_wait_ms, metrics=state.metrics,
            )
            if settings.warmup:
                await model_worker.run(_warm_up, backbone, heads, settings.max_batch_size)
            batcher.start()
            assert state.heads is not None
            state.predictor = Predictor(
                state.heads, batcher, FeatureLRU(settings.feature_cache_size, state.metrics),
                head_worker, image_size=expected.input_size,
                max_upload_bytes=settings.max_upload_bytes, metrics=state.metrics,
            )
            state.ready_at = time.time()
            state.metrics.ready.set(1)
            logger.info("ready: conv base loaded%s in %.1fs; serving %s",
                        " and warmed up" if settings.warmup else "", time.perf_counter() - t0,
                        ", ".join(h.name for h in heads))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            state.load_error = f"the model failed to load: {exc}"
            logger.exception("the model failed to load")
            if on_load_failure is not None:
                on_load_failure(exc)

    app = FastAPI(
        title="featcache",
        summary="Image in, label out: VGG16 features (cached) and a trained head.",
        lifespan=lifespan,
    )
    app.state.featcache = state
    install_error_handlers(app)
    # Last added runs first: metrics see every response, including 413s and 500s.
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(BodyLimitMiddleware, limits={
        "/predict": settings.max_upload_bytes + 64 * 1024,  # room for the multipart framing
        "/predict/batch": settings.max_batch_request_bytes,
    })
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    for module in (health, predict, heads, metrics):
        app.include_router(module.router)
    return app


def _warm_up(backbone: Backbone, heads: list[Head], max_batch_size: int) -> None:
    """One pass at batch size 1 and one at the largest, so neither first request pays tracing."""
    size = backbone.spec.input_size
    sizes = sorted({1, max_batch_size})
    features: Any = None
    for n in sizes:
        features = backbone(np.zeros((n, size, size, 3), dtype=np.uint8))
    for head in heads:
        head.predict_proba(np.asarray(features[:1], dtype=np.float32))
