"""Target 4: 8 concurrent clients for 60 s against `serve`; no errors, throughput vs `extract`.

Measures, in one run: `extract` images/s (default runtime) on a folder of real images, then
8 client threads posting distinct real images (feature-cache misses) to a local `serve` for
60 s. Reports errors, throughput, p50 and p99 latency, and throughput / extract's images/s.
Trains a small head first unless --head is given.

    .venv/bin/python benchmarks/serve_load.py [--clients 8] [--seconds 60] [--head DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _common import ELPV, WEIGHTS, machine, run_extract
from _serve import DistinctImages, make_head, serving

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TARGET_RATIO = 0.85


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--dir", type=Path, default=ELPV / "validation",
                    help="folder `extract` runs on for the comparison")
    ap.add_argument("--head", type=Path)
    ap.add_argument("--serve-args", default="",
                    help='extra options for `serve`, e.g. "--max-wait-ms 0"')
    args = ap.parse_args()

    import httpx

    print(f"machine: {machine()}", flush=True)
    images = DistinctImages()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    with tempfile.TemporaryDirectory(prefix="featcache-load-") as tmp:
        ext = run_extract(["--dir", str(args.dir), "--out", f"{tmp}/x.h5",
                           "--weights", str(WEIGHTS)], timeout=1800)
        head = args.head or make_head(Path(tmp))
        with serving(head, *shlex.split(args.serve_args)) as url:
            stop_at = 0.0

            def client() -> None:
                with httpx.Client(base_url=url, timeout=60) as c:
                    while time.perf_counter() < stop_at:
                        with lock:
                            data = images.next()
                        t = time.perf_counter()
                        try:
                            r = c.post("/predict", files={"file": ("i.png", data, "image/png")})
                            ok = r.status_code == 200
                            why = f"HTTP {r.status_code}: {r.text[:200]}"
                        except httpx.HTTPError as exc:
                            ok, why = False, repr(exc)
                        dt = time.perf_counter() - t
                        with lock:
                            if ok:
                                latencies.append(dt)
                            else:
                                errors.append(why)

            # Warm-up, untimed: one request per client's connection.
            with httpx.Client(base_url=url, timeout=60) as c:
                for _ in range(args.clients):
                    c.post("/predict", files={"file": ("i.png", images.next(), "image/png")})
            t0 = time.perf_counter()
            stop_at = t0 + args.seconds
            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            wall = time.perf_counter() - t0

    lat = np.array(latencies) * 1000
    throughput = len(latencies) / wall
    result = {
        "extract_img_per_s": ext["img_per_s"],
        "clients": args.clients,
        "seconds": round(wall, 1),
        "ok": len(latencies),
        "errors": len(errors),
        "throughput_img_per_s": round(throughput, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
    }
    print(json.dumps(result))
    for why in errors[:5]:
        print(f"error: {why}")
    ratio = throughput / ext["img_per_s"]
    print(f"serving throughput / extract images/s: {ratio:.2f} (target >= {TARGET_RATIO}); "
          f"errors: {len(errors)} (target 0)")
    ok = not errors and ratio >= TARGET_RATIO
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
