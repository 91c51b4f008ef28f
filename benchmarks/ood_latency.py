"""What the out-of-distribution guard adds to /predict: one server, the same head with and
without its guard, requests alternating between them so both see the same machine load.

Distinct images (feature-cache misses: decode + forward pass + head + guard) and one repeated
image (hits: the head and the guard alone, plus HTTP). Prints p50 and p90 of each, and the
difference of the p50s.

    python benchmarks/ood_latency.py --head heads/elpv [--requests 40]

The head without a guard is a copy of --head with its ood.npz and metadata entry removed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine
from _serve import DistinctImages, serving


def unguarded_copy(head: Path, out: Path) -> Path:
    shutil.copytree(head, out)
    meta = json.loads((out / "metadata.json").read_text())
    meta.pop("ood", None)
    meta["files"] = [f for f in meta.get("files", []) if f != "ood.npz"]
    (out / "metadata.json").write_text(json.dumps(meta, indent=2))
    (out / "ood.npz").unlink(missing_ok=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head", type=Path, required=True, help="a head with a guard")
    ap.add_argument("--requests", type=int, default=40, help="per head and kind (default 40)")
    args = ap.parse_args()

    import httpx

    print(f"machine: {machine()}", flush=True)
    images = DistinctImages()
    with tempfile.TemporaryDirectory(prefix="featcache-ood-lat-") as tmp:
        guarded = Path(tmp) / "guarded"
        shutil.copytree(args.head, guarded)
        plain = unguarded_copy(args.head, Path(tmp) / "plain")
        times: dict[str, list[float]] = {k: [] for k in ("guard miss", "plain miss",
                                                         "guard hit", "plain hit")}
        with (serving(guarded, "--head", str(plain)) as url,
              httpx.Client(base_url=url, timeout=120) as client):

            def post(data: bytes, head: str) -> float:
                t = time.perf_counter()
                r = client.post("/predict", params={"head": head},
                                files={"file": ("img.png", data, "image/png")})
                dt = time.perf_counter() - t
                r.raise_for_status()
                assert ("ood_score" in r.json()) and ((r.json()["ood_score"] is None)
                                                      == (head == "plain"))
                return dt * 1000

            for _ in range(3):
                post(images.next(), "guarded")
                post(images.next(), "plain")
            for i in range(args.requests):
                order = ("guarded", "plain") if i % 2 == 0 else ("plain", "guarded")
                for head in order:
                    key = "guard miss" if head == "guarded" else "plain miss"
                    times[key].append(post(images.next(), head))
            same = images.next()
            post(same, "guarded")
            for i in range(args.requests):
                order = ("guarded", "plain") if i % 2 == 0 else ("plain", "guarded")
                for head in order:
                    key = "guard hit" if head == "guarded" else "plain hit"
                    times[key].append(post(same, head))
    for key, values in times.items():
        print(f"{key:<11} p50 {statistics.median(values):8.2f} ms   p90 "
              f"{float(np.percentile(values, 90)):8.2f} ms   (n={len(values)})")
    for kind in ("miss", "hit"):
        diff = statistics.median(times[f"guard {kind}"]) - statistics.median(times[f"plain {kind}"])
        print(f"guard - plain, p50 of the {kind} requests: {diff:+.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
