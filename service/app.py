"""The FastAPI application: built by `create_app`, loaded in its lifespan, never at import time.

Start-up runs in two steps. Synchronously, before the port opens: the heads are loaded and
checked against the spec of the features the configured weights make, so a wrong `--head` or
weights file stops the server with a clear message (a broken head in `--heads-dir` is reported,
not fatal: that folder changes while the server runs). Then, in the background on the model's
own thread: the conv base is built and warmed up; `/health` answers meanwhile and `/ready` says
503 until it is done. The heads folder, if any, is watched from then on (service/head_store.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI
from numpy.typing import NDArray
from starlette.concurrency import run_in_threadpool

from extractor import features as named
from extractor.features import Features
from extractor.spec import FeatureSpec
from extractor.weights import WeightsError
from service.api.errors import install_error_handlers
from service.api.middleware import (
    ApiKeyMiddleware,
    BodyBudget,
    BodyLimitMiddleware,
    CatchAllMiddleware,
    DisconnectMiddleware,
    MetricsMiddleware,
    V2ErrorMiddleware,
)
from service.api.routes import admin, heads, health, metrics, predict, ui, v2
from service.app_state import AppState
from service.batching import MicroBatcher, ModelWorker
from service.config import Settings
from service.errors import ScanBusyError, StartupError
from service.explaining import MapsRunner
from service.feature_cache import feature_cache
from service.head_store import HeadStore
from service.heads import ServedHead, check_heads, load_heads
from service.metrics import Metrics
from service.predictor import Predictor

logger = logging.getLogger(__name__)


class Backbone(Protocol):
    spec: FeatureSpec

    def __call__(self, pixels: NDArray[np.uint8]) -> Features: ...


#: Builds the conv base that makes features as the spec says: (weights path, spec) -> backbone.
#: Runs on the model thread.
BackboneFactory = Callable[[Path, FeatureSpec], Backbone]


def conv_base_factory(weights_path: Path, spec: FeatureSpec) -> Backbone:
    from extractor.backbone import ConvBase
    from extractor.runtimes import AUTO

    # AUTO, not the spec's runtime: the expected spec says keras (`make_spec`'s default) and
    # the service has always run the fastest installed runtime, which gives the same features.
    return ConvBase.from_spec(spec, weights_path, runtime=AUTO)


def _expected_spec(settings: Settings, hint: FeatureSpec | None) -> tuple[Path, FeatureSpec]:
    """The weights file, and the spec the base will have, found without building it: the maps
    layer and input size of `hint` (the first head's spec), else the extractor's defaults,
    with the pooled vectors of every layer `extract` stores by default. Those come from the
    same forward pass (block3 and block4 lie on the way to block5), so a head of any of them
    is served, and a head added later by a reload finds them too.

    int8 (`settings.precision`): the int8 model that made the first head's features, found by
    its hash (or this machine's own when it hashes the same); `StartupError` says which file to
    copy otherwise. A head of the other precision gets no int8 model built for it: it is
    refused by `check_heads`, which names the precision.
    """
    from extractor.backbone import make_spec
    from extractor.features import DEFAULT_POOLED_LAYERS
    from extractor.runtimes.int8 import Int8Error
    from extractor.vgg16 import DEFAULT_IMAGE_SIZE, DEFAULT_LAYER
    from extractor.weights import resolve_weights

    weights_path = resolve_weights(settings.weights)
    layer, size = (DEFAULT_LAYER, DEFAULT_IMAGE_SIZE) if hint is None else (hint.layer,
                                                                            hint.input_size)
    if settings.precision == "int8" and (hint is None or hint.precision == "int8"):
        try:
            spec = make_spec(weights_path, layer, size, runtime="onnxruntime",
                             pooled_layers=DEFAULT_POOLED_LAYERS, precision="int8",
                             quantized_sha256=hint.quantized_sha256 if hint else None)
        except Int8Error as exc:
            raise StartupError(f"cannot serve with --precision int8: {exc}") from None
        return weights_path, spec
    spec = make_spec(weights_path, layer, size, pooled_layers=DEFAULT_POOLED_LAYERS)
    return weights_path, dataclasses.replace(spec, precision=settings.precision)


def _open_heads(settings: Settings) -> tuple[HeadStore, Path, FeatureSpec]:
    """Load the --head heads and scan --heads-dir once; the base's weights and spec."""
    if not settings.heads and settings.heads_dir is None:
        raise StartupError("no head to serve: pass --head heads/NAME or --heads-dir DIR (or set "
                           "FEATCACHE_HEADS or FEATCACHE_HEADS_DIR)")
    fixed = load_heads(settings.heads)
    if fixed:
        weights_path, expected = _expected_spec(settings, fixed[0].spec)
        check_heads(fixed, expected)
        store = HeadStore.open(fixed, settings.heads_dir, base_spec=expected,
                               default=settings.default_head, settle_s=_settle_s(settings))
        return store, weights_path, expected
    # The heads folder alone: its first scan loads every version, then chooses the base from
    # those that loaded completely (service.head_store.choose_spec) before checking them.
    weights: list[Path] = []

    def choose_base(hint: FeatureSpec | None) -> FeatureSpec:
        weights_path, spec = _expected_spec(settings, hint)
        weights.append(weights_path)
        return spec

    store = HeadStore.open([], settings.heads_dir, choose_base=choose_base,
                           default=settings.default_head, settle_s=_settle_s(settings))
    assert store.base_spec is not None and weights
    return store, weights[-1], store.base_spec


def _settle_s(settings: Settings) -> float:
    """How long a folder that looks half copied is "loading" before it is "failed": two polls,
    so a copy in progress is retried at least twice before it is reported."""
    return max(1.0, 2 * settings.heads_poll_s) if settings.heads_poll_s > 0 else 5.0


async def _watch(store: HeadStore, poll_s: float, settle_s: float) -> None:
    """Rescan the heads folder every `poll_s` seconds (0: only retry incomplete versions).

    Polling rather than inotify: it works the same on Linux, macOS, Docker bind mounts and
    network filesystems (NFS, EFS, SMB), where change events arrive late or never, and on
    Kubernetes volumes that are swapped by symlink; a scan is a few stat() calls per version.
    """
    while True:
        await asyncio.sleep(poll_s or settle_s)
        if poll_s == 0 and not store.has_loading():
            continue
        await _rescan(store)


async def _rescan(store: HeadStore) -> None:
    try:
        await store.rescan()  # on the store's scanning thread, never on the event loop
    except ScanBusyError as exc:
        logger.warning("heads folder: %s", exc)
    except Exception:
        logger.exception("scanning the heads folder failed")


def _install_sighup(store: HeadStore) -> Callable[[], None] | None:
    """SIGHUP rescans the heads folder (as nginx and many daemons reload on it); returns the
    function that removes the handler. Only where signals can be handled: the main thread."""
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return None
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def on_sighup() -> None:
        logger.info("SIGHUP: rescanning the heads folder")
        task = loop.create_task(_rescan(store), name="sighup-rescan")
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    return remove


def create_app(
    settings: Settings | None = None,
    *,
    backbone_factory: BackboneFactory = conv_base_factory,
    on_load_failure: Callable[[BaseException], None] | None = None,
    reload_on_sighup: bool = False,
) -> FastAPI:
    """The app for these settings. `backbone_factory` lets tests serve a fake conv base;
    `on_load_failure` lets the CLI stop the server when the model cannot be built;
    `reload_on_sighup` (the CLI's) makes SIGHUP rescan --heads-dir."""
    settings = settings or Settings()
    state = AppState(settings=settings, metrics=Metrics())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            store, weights_path, expected = await run_in_threadpool(_open_heads, settings)
        except (StartupError, WeightsError) as exc:
            logger.error("cannot start: %s", exc)
            raise
        state.head_store = store

        model_worker, head_worker = ModelWorker(), ModelWorker()
        decoder = ModelWorker(settings.decode_concurrency, "featcache-decode")
        loading = asyncio.create_task(
            _load(store, weights_path, expected, model_worker, head_worker, decoder),
            name="load-model",
        )
        watching = (asyncio.create_task(_watch(store, settings.heads_poll_s, _settle_s(settings)),
                                        name="watch-heads") if store.watching else None)
        remove_sighup = _install_sighup(store) if reload_on_sighup and store.watching else None
        try:
            yield
        finally:
            if remove_sighup is not None:
                remove_sighup()
            for task in (loading, watching):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if state.predictor is not None:
                await state.predictor.batcher.stop()
            state.predictor = None
            state.metrics.ready.set(0)
            await run_in_threadpool(model_worker.shutdown)
            await run_in_threadpool(head_worker.shutdown)
            await run_in_threadpool(decoder.shutdown)

    async def _load(
        store: HeadStore, weights_path: Path, expected: FeatureSpec, model_worker: ModelWorker,
        head_worker: ModelWorker, decoder: ModelWorker,
    ) -> None:
        try:
            t0 = time.perf_counter()
            backbone = await model_worker.run(backbone_factory, weights_path, expected)
            heads = store.current().all()
            check_heads(heads, backbone.spec)
            store.base_spec = backbone.spec
            batcher = MicroBatcher(
                backbone, model_worker, max_batch_size=settings.max_batch_size,
                max_wait_ms=settings.max_wait_ms, metrics=state.metrics,
                # A pass longer than any request may wait: the model thread is as good as dead.
                stall_s=settings.request_timeout_s,
            )
            if settings.warmup:
                await model_worker.run(_warm_up, backbone, heads, settings.max_batch_size)
            batcher.start()
            state.predictor = Predictor(
                batcher, feature_cache(settings, state.metrics),
                head_worker, decoder=decoder, image_size=expected.input_size,
                max_upload_bytes=settings.max_upload_bytes,
                max_image_pixels=settings.max_image_pixels, max_queue=settings.max_queue,
                request_timeout_s=settings.request_timeout_s, metrics=state.metrics,
                tta=settings.tta, maps=MapsRunner(backbone, model_worker),
                refuse_ood=settings.refuse_ood,
            )
            state.ready_at = time.time()
            state.metrics.ready.set(1)
            logger.info("ready: conv base loaded%s in %.1fs; serving %s",
                        " and warmed up" if settings.warmup else "", time.perf_counter() - t0,
                        ", ".join(sorted({h.name for h in heads})) or "no head yet")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # /ready is open to all: why stays in the log.
            state.load_error = "the model failed to load; the server log says why"
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
    }, patterns=[
        (r"/v2/models/[^/]+(/versions/[^/]+)?/infer", settings.max_batch_request_bytes),
    ], budget=BodyBudget(settings.max_body_bytes_in_flight),
        body_timeout_s=settings.body_timeout_s)
    # Before the body limit: a client without the key learns nothing, not even the limits.
    open_paths = {"/health", "/ready", "/v2/health/live", "/v2/health/ready", app.docs_url,
                  app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url}
    if settings.ui:
        open_paths |= ui.PATHS  # the page asks for the key itself
    app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key,
                       open_paths={p for p in open_paths if p})
    # Outside the key check and the body limit, inside the metrics: their 401s and 413s under
    # /v2 get the protocol's shape, and the metrics count the status the client gets.
    app.add_middleware(V2ErrorMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    # Outermost: the metrics see a request cancelled for a disconnected client (as 499).
    app.add_middleware(DisconnectMiddleware)
    for module in (health, predict, heads, admin, metrics):
        app.include_router(module.router)
    app.include_router(v2.health_router)
    app.include_router(v2.router)
    if settings.ui:
        app.include_router(ui.router)
    return app


def _warm_up(backbone: Backbone, heads: list[ServedHead], max_batch_size: int) -> None:
    """One pass at batch size 1 and one at the largest, so neither first request pays tracing."""
    size = backbone.spec.input_size
    sizes = sorted({1, max_batch_size})
    features: Any = None
    for n in sizes:
        features = backbone(np.zeros((n, size, size, 3), dtype=np.uint8))
    for head in heads:
        head.predict_proba(named.row(features, 0))
