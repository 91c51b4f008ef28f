"""Target 3: one client; /predict median latency vs one image's forward pass; cache-hit latency.

Measures, in one run: the forward pass of one image on the conv base `serve` uses (the default
runtime, in this process, before and after the HTTP part), then against a local `serve`:
sequential /predict of distinct images (feature-cache misses) and of one repeated image (hits).
Trains a small head first unless --head is given.

    .venv/bin/python benchmarks/serve_latency.py [--requests 60] [--head DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import WEIGHTS, machine
from _serve import DistinctImages, make_head, serving

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TARGET_RATIO = 1.2
TARGET_HIT_MS = 5.0


def forward_ms(base, pixels: np.ndarray, n: int) -> float:
    base(pixels)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        base(pixels)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--head", type=Path)
    ap.add_argument("--serve-args", default="",
                    help='extra options for `serve`, e.g. "--max-wait-ms 0"')
    args = ap.parse_args()

    import httpx

    from extractor.backbone import ConvBase
    from extractor.images import decode_image

    print(f"machine: {machine()}", flush=True)
    images = DistinctImages()
    pixels = decode_image(images.sources[0], 150)[None]
    base = ConvBase(WEIGHTS)
    fwd_before = forward_ms(base, pixels, 30)
    with tempfile.TemporaryDirectory(prefix="featcache-serve-") as tmp:
        head = args.head or make_head(Path(tmp))
        with (
            serving(head, *shlex.split(args.serve_args)) as url,
            httpx.Client(base_url=url, timeout=60) as client,
        ):

            def post(data: bytes) -> float:
                t = time.perf_counter()
                r = client.post("/predict", files={"file": ("img.png", data, "image/png")})
                dt = time.perf_counter() - t
                r.raise_for_status()
                return dt * 1000

            for _ in range(5):  # warm-up: connection, threadpool, allocator
                post(images.next())
            miss = [post(images.next()) for _ in range(args.requests)]
            same = images.next()
            post(same)
            hit = [post(same) for _ in range(args.requests)]
    fwd_after = forward_ms(base, pixels, 30)
    fwd = (fwd_before + fwd_after) / 2
    result = {
        "runtime": base.spec.runtime,
        "forward_1_ms": round(fwd, 2),
        "forward_1_ms_before_after": [round(fwd_before, 2), round(fwd_after, 2)],
        "predict_p50_ms": round(statistics.median(miss), 2),
        "predict_p90_ms": round(float(np.percentile(miss, 90)), 2),
        "hit_p50_ms": round(statistics.median(hit), 2),
        "hit_p90_ms": round(float(np.percentile(hit, 90)), 2),
        "requests": args.requests,
    }
    ratio = result["predict_p50_ms"] / fwd
    print(json.dumps(result))
    print(f"/predict median / forward pass of one image: {ratio:.2f}x (target <= {TARGET_RATIO})")
    print(f"repeated image (feature-cache hit) median:   {result['hit_p50_ms']:.2f} ms "
          f"(target < {TARGET_HIT_MS})")
    ok = ratio <= TARGET_RATIO and result["hit_p50_ms"] < TARGET_HIT_MS
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
