"""Issue 21: what `?explain=true` adds to a /predict request (one client, distinct images).

Against a local `serve` (a logreg head on block3-5 pooled vectors, trained first unless --head
is given), requests alternate between plain /predict and /predict?explain=true, each with an
image not seen before (feature-cache misses both ways), so both see the same machine load.
Prints the p50 and p90 of each, the server's own explain time (timings_ms.explain: the heatmap
and its PNG, after the forward pass), and the size of an explained answer.

    .venv/bin/python benchmarks/explain_latency.py [--requests 40] [--head DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine
from _serve import DistinctImages, make_head, serving

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=40, help="requests of each kind")
    ap.add_argument("--head", type=Path)
    args = ap.parse_args()

    import httpx

    print(f"machine: {machine()}", flush=True)
    images = DistinctImages()
    times: dict[str, list[float]] = {"plain": [], "explain": []}
    server_explain: list[float] = []
    size = 0
    with tempfile.TemporaryDirectory(prefix="featcache-explain-") as tmp:
        head = args.head or make_head(Path(tmp))
        with serving(head) as url, httpx.Client(base_url=url, timeout=120) as client:

            def post(explain: bool) -> httpx.Response:
                t = time.perf_counter()
                r = client.post("/predict", params={"explain": explain},
                                files={"file": ("img.png", images.next(), "image/png")})
                dt = time.perf_counter() - t
                r.raise_for_status()
                times["explain" if explain else "plain"].append(dt * 1000)
                return r

            for _ in range(3):  # warm-up: connection, threadpool, allocator, both paths
                post(False)
                post(True)
            for kind in times:
                times[kind].clear()
            for i in range(2 * args.requests):
                r = post(explain=i % 2 == 1)
                if i % 2 == 1:
                    server_explain.append(r.json()["timings_ms"]["explain"])
                    size = len(r.content)
    result = {
        "requests_each": args.requests,
        "predict_p50_ms": round(statistics.median(times["plain"]), 1),
        "predict_p90_ms": round(float(np.percentile(times["plain"], 90)), 1),
        "explain_p50_ms": round(statistics.median(times["explain"]), 1),
        "explain_p90_ms": round(float(np.percentile(times["explain"], 90)), 1),
        "server_explain_p50_ms": round(statistics.median(server_explain), 1),
        "explained_answer_kb": round(size / 1024, 1),
    }
    print(json.dumps(result))
    print(f"?explain=true adds {result['explain_p50_ms'] - result['predict_p50_ms']:.1f} ms to "
          f"the p50 ({result['explain_p50_ms'] / result['predict_p50_ms']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
