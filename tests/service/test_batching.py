"""Micro-batching and the feature cache: concurrent requests share forward passes."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from imagegen import encode, gradient
from PIL import Image

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
    cache = FeatureLRU(2, metrics)
    a, b, c = (np.full((1, 1, 2), v, np.float32) for v in (1, 2, 3))
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
