"""Issue 11, item 1: what one request can make the server hold while decoding is bounded."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from imagegen import encode, gradient
from PIL import Image

from extractor import images


def test_serving_pixel_limit_is_413(fake_app) -> None:  # type: ignore[no-untyped-def]
    """Far under Pillow's bomb limit, over the serving one: refused before it is decoded."""
    png = encode(Image.fromarray(gradient(200, 150, seed=1)))
    # A JPEG counts the pixels draft mode decodes (1/8 scale here), not those of its header.
    jpeg = encode(Image.fromarray(gradient(1200, 1200, seed=2)), "JPEG")
    with fake_app(max_image_pixels=200 * 150 - 1, warmup=False) as client:
        r = client.post("/predict", files={"file": ("big.png", png)})
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "image_too_large"
        assert "200x150" in r.json()["error"]["message"]
        assert client.post("/predict", files={"file": ("a.jpg", jpeg)}).status_code == 200
    with fake_app(max_image_pixels=200 * 150, warmup=False) as client:
        assert client.post("/predict", files={"file": ("big.png", png)}).status_code == 200


def test_decodes_run_at_most_decode_concurrency_at_once(
    fake_app, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """A 16-file batch decodes 2 at a time, not 16: decode memory is bounded per server."""
    real = images.decode_image
    lock = threading.Lock()
    running = peak = 0

    def counting(data: bytes, size: int, **kw: object) -> np.ndarray:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            time.sleep(0.05)  # long enough for every decode the server allows to overlap
            return real(data, size, **kw)  # type: ignore[arg-type]
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(images, "decode_image", counting)
    files = [("files", (f"{i}.png", encode(Image.fromarray(gradient(40 + i, 40, seed=i)))))
             for i in range(16)]
    with fake_app(decode_concurrency=2, warmup=False) as client:
        r = client.post("/predict/batch", files=files)
    assert r.status_code == 200 and r.json()["succeeded"] == 16, r.text
    assert peak == 2
