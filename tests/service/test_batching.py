"""Micro-batching and the feature cache: concurrent requests share forward passes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from imagegen import encode, gradient
from PIL import Image
from prometheus_client import generate_latest

from extractor.features import shapes
from service.batching import MicroBatcher, ModelWorker
from service.feature_cache import FeatureLRU
from service.metrics import Metrics

N = 16


def _images(n: int) -> list[bytes]:
    return [encode(Image.fromarray(gradient(40 + i, 40, seed=i))) for i in range(n)]


def _post_all(client, uploads: list[bytes]) -> list:  # type: ignore[no-untyped-def, type-arg]
    with ThreadPoolExecutor(len(uploads)) as pool:
        return list(pool.map(
            lambda d: client.post("/predict", files={"file": ("x.png", d)}), uploads))


def test_parallel_requests_share_forward_passes(fake_app, make_fake) -> None:  # type: ignore[no-untyped-def]
    fake = make_fake(delay_s=0.05)
    with fake_app(backbone=fake, max_batch_size=8, max_wait_ms=20, warmup=False) as client:
        responses = _post_all(client, _images(N))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        assert sum(fake.batch_sizes) == N
        assert len(fake.batch_sizes) < N, fake.batch_sizes
        assert max(fake.batch_sizes) <= 8
        assert max(r.json()["timings_ms"]["forward"] for r in responses) > 0
    # One worker owns the model: every pass ran on the same thread.
    assert len(fake.threads) == 1 and next(iter(fake.threads)).startswith("featcache-model")


def test_batching_off_runs_one_pass_per_image(fake_app, make_fake) -> None:  # type: ignore[no-untyped-def]
    fake = make_fake(delay_s=0.01)
    with fake_app(backbone=fake, max_batch_size=1, warmup=False) as client:
        responses = _post_all(client, _images(6))
    assert all(r.status_code == 200 for r in responses)
    assert fake.batch_sizes == [1] * 6


def test_batch_endpoint_is_one_forward_pass(fake_app, make_fake) -> None:  # type: ignore[no-untyped-def]
    fake = make_fake()
    with fake_app(backbone=fake, max_batch_size=8, max_wait_ms=50, warmup=False) as client:
        files = [("files", (f"{i}.png", d)) for i, d in enumerate(_images(5))]
        assert client.post("/predict/batch", files=files).status_code == 200
    assert fake.batch_sizes == [5]


def test_warm_up_runs_before_ready(fake_app, make_fake) -> None:  # type: ignore[no-untyped-def]
    fake = make_fake()
    with fake_app(backbone=fake, max_batch_size=4):
        assert fake.batch_sizes == [1, 4]


def test_feature_cache_evicts_least_recently_used() -> None:
    metrics = Metrics()
    a, b, c = (np.full((1, 1, 2), v, np.float32) for v in (1, 2, 3))
    cache = FeatureLRU(2 * a.nbytes, metrics)  # room for two
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", c)
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    assert (cache.hits, cache.misses, cache.evictions, len(cache)) == (3, 1, 1, 2)
    with pytest.raises(ValueError, match="read-only"):
        cache.get("a")[...] = 0  # type: ignore[index]
    off = FeatureLRU(0, metrics)
    off.put("a", a)
    assert off.get("a") is None and len(off) == 0


def test_repeat_upload_skips_the_backbone(fake_app, make_fake) -> None:  # type: ignore[no-untyped-def]
    fake = make_fake()
    data = _images(1)[0]
    with fake_app(backbone=fake, warmup=False, feature_cache_size=10) as client:
        first = client.post("/predict", files={"file": ("a.png", data)}).json()
        second = client.post("/predict", files={"file": ("b.png", data)}).json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert fake.batch_sizes == [1]


def test_batcher_fails_every_request_of_a_failed_pass() -> None:
    def broken(pixels: np.ndarray) -> np.ndarray:
        raise RuntimeError("boom")

    async def scenario() -> list[object]:
        worker = ModelWorker()
        batcher = MicroBatcher(broken, worker, max_batch_size=4, max_wait_ms=10,
                               metrics=Metrics())
        batcher.start()
        try:
            pixels = np.zeros((8, 8, 3), np.uint8)
            return await asyncio.gather(*(batcher.submit(pixels) for _ in range(3)),
                                        return_exceptions=True)
        finally:
            await batcher.stop()
            worker.shutdown()

    results = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) for r in results)


# --- Issue 11, item 3: a failure anywhere in a batch fails that batch, never the batcher ---

def test_a_failure_after_the_forward_pass_fails_its_batch_and_the_batcher_lives_on() -> None:
    """A conv base that returns one row too few: that batch's requests fail, the next succeed.
    (Before issue 11 the row-count error killed the batching task, and every later request
    waited forever.)"""
    calls = 0

    def short_then_fine(pixels: np.ndarray) -> dict[str, np.ndarray]:
        nonlocal calls
        calls += 1
        rows = len(pixels) - 1 if calls == 1 else len(pixels)
        return {"block5_pool/avg": np.zeros((rows, 2), np.float32)}

    async def scenario() -> tuple[list[object], object]:
        worker = ModelWorker()
        batcher = MicroBatcher(short_then_fine, worker, max_batch_size=4, max_wait_ms=50,
                               metrics=Metrics())
        batcher.start()
        try:
            pixels = np.zeros((8, 8, 3), np.uint8)
            first = await asyncio.wait_for(asyncio.gather(
                *(batcher.submit(pixels) for _ in range(3)), return_exceptions=True), 5)
            later = await asyncio.wait_for(batcher.submit(pixels), 5)
            return first, later
        finally:
            await batcher.stop()
            worker.shutdown()

    first, later = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) and "2 rows for 3 images" in str(r) for r in first)
    features, timings = later  # type: ignore[misc]
    assert features["block5_pool/avg"].shape == (1, 2) and timings.batch_size == 1


def test_ready_is_503_when_the_batching_task_is_dead(fake_app) -> None:  # type: ignore[no-untyped-def]
    data = _images(1)[0]
    with fake_app(warmup=False, request_timeout_s=5) as client:
        assert client.get("/ready").status_code == 200
        predictor = client.app.state.featcache.predictor  # type: ignore[attr-defined]
        task = predictor.batcher._task
        client.portal.call(_cancel, task)  # dies as an unexpected error would end it
        r = client.get("/ready")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready", r.text
        assert "featcache_ready 0.0" in client.get("/metrics").text
        # No request waits for a batcher that is gone: an answer at once, not a hang.
        r = client.post("/predict", files={"file": ("a.png", data)})
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready", r.text


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.sleep(0)


def test_ready_is_503_while_the_model_thread_is_stuck(fake_app, make_fake) -> None:  # type: ignore[no-untyped-def]
    """A forward pass running longer than any request may wait: the model thread is as good as
    dead until it returns."""
    fake = make_fake(delay_s=1.5)
    with fake_app(backbone=fake, warmup=False, request_timeout_s=0.5) as client:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.post, "/predict", files={"file": ("a.png", _images(1)[0])})
            time.sleep(1.0)
            stuck = client.get("/ready")
            pending.result()
        time.sleep(0.7)  # the pass ends
        assert client.get("/ready").status_code == 200
    assert stuck.status_code == 503 and stuck.json()["error"]["code"] == "not_ready", stuck.text


# --- Issue 11, item 5: the feature cache is bounded by bytes, whatever an entry holds ---

KIB = 1024


def test_feature_cache_is_bounded_by_bytes() -> None:
    metrics = Metrics()
    cache = FeatureLRU(max_bytes=200 * KIB, metrics=metrics)
    block5 = np.zeros((4, 4, 512), np.float32)  # 32 KiB
    block4 = np.zeros((9, 9, 512), np.float32)  # 162 KiB: 5x block5's
    # Contract A: several named arrays per entry; its size is the sum of theirs.
    named = {"block5_pool": block5, "block5_pool/avg": np.zeros(512, np.float32),
             "block4_pool/avg": np.zeros(512, np.float32)}  # 36 KiB
    cache.put("a", block5)
    cache.put("b", block5)
    assert (len(cache), cache.nbytes) == (2, 64 * KIB)
    cache.put("c", block4)  # 226 KiB: a, least recently used, goes
    assert cache.get("a") is None
    assert (len(cache), cache.nbytes) == (2, 194 * KIB)
    cache.put("d", named)  # 230 KiB: b goes; c and d make 198 KiB
    assert cache.get("b") is None
    assert (len(cache), cache.nbytes) == (2, 198 * KIB)
    got = cache.get("d")
    assert isinstance(got, Mapping) and set(got) == set(named)
    with pytest.raises(ValueError, match="read-only"):
        got["block5_pool"][...] = 1
    with pytest.raises(TypeError):
        got["extra"] = block5  # type: ignore[index]
    cache.put("e", np.zeros((300, 512), np.float32))  # larger than the whole cache: not kept
    assert cache.get("e") is None and cache.get("c") is not None and cache.nbytes == 198 * KIB
    assert "featcache_feature_cache_bytes 202752.0" in generate_latest(metrics.registry).decode()


def test_feature_cache_bytes_setting(fake_app, make_fake) -> None:  # type: ignore[no-untyped-def]
    """Room for two images' features: the third upload evicts the first."""
    fake = make_fake()
    uploads = _images(3)
    # block5_pool maps (32 KiB) and the pooled vectors of block3-5 (10 KiB)
    entry = sum(int(np.prod(shape)) * 4 for shape in shapes(fake.spec).values())
    assert entry == 42 * KIB
    with fake_app(backbone=fake, warmup=False, feature_cache_bytes=2 * entry) as client:
        for data in uploads:
            r = client.post("/predict", files={"file": ("x.png", data)})
            assert r.json()["cached"] is False
        again = [client.post("/predict", files={"file": ("x.png", d)}).json()["cached"]
                 for d in (uploads[2], uploads[0])]
        assert f"featcache_feature_cache_bytes {2 * entry}.0" in client.get("/metrics").text
    assert again == [True, False]


def test_feature_cache_size_still_caps_entries_and_is_deprecated(
    fake_app, make_fake, caplog: pytest.LogCaptureFixture  # type: ignore[no-untyped-def]
) -> None:
    fake = make_fake()
    data = _images(2)
    with caplog.at_level(logging.WARNING), fake_app(
            backbone=fake, warmup=False, feature_cache_size=1) as client:
        for d in (*data, data[1], data[0]):
            client.post("/predict", files={"file": ("x.png", d)})
    assert fake.batch_sizes == [1, 1, 1]  # the second stayed; the first was evicted
    assert "FEATCACHE_FEATURE_CACHE_BYTES" in caplog.text and "deprecated" in caplog.text
