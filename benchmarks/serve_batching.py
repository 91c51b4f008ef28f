"""Does micro-batching help on this CPU? Throughput and latency of `serve` at several batch sizes.

For each --max-batch-size value, starts the real `serve` command on 127.0.0.1 (feature cache off,
so every request runs the conv base), waits until ready, then sends --requests distinct real
images from --clients concurrent clients, and reads the forward passes from /metrics. Also
measures one client alone (latency with no one to batch with). Only ever talks to 127.0.0.1.

    .venv/bin/python benchmarks/serve_batching.py                       # 1 vs 4 vs 8
    .venv/bin/python benchmarks/serve_batching.py --batch-sizes 1 8 --clients 16 --requests 128
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FEATCACHE_SHARED", REPO.parent / "shared"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_head(images: Path, workdir: Path, per_class: int = 16) -> Path:
    """A logistic-regression head on a few real images (the head's cost is negligible here)."""
    import shutil

    from classifier.training import train
    from extractor.runner import Options, run

    folder = workdir / "images"
    for cls in sorted(p.name for p in images.iterdir() if p.is_dir()):
        (folder / cls).mkdir(parents=True)
        for src in sorted((images / cls).iterdir())[:per_class]:
            shutil.copy(src, folder / cls / src.name)
    cache = workdir / "feats.h5"
    run(Options(directory=folder, out=cache, progress=False))
    return train(cache, workdir / "heads" / "bench", head="logreg")


async def _client(client: httpx.AsyncClient, queue: asyncio.Queue[bytes],
                  latencies: list[float]) -> None:
    while True:
        try:
            data = queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        t0 = time.perf_counter()
        r = await client.post("/predict", files={"file": ("x.png", data)})
        r.raise_for_status()
        latencies.append(time.perf_counter() - t0)


async def load(base: str, uploads: list[bytes], clients: int) -> tuple[float, list[float]]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for data in uploads:
        queue.put_nowait(data)
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(_client(client, queue, latencies) for _ in range(clients)))
        return time.perf_counter() - t0, latencies


def forward_stats(base: str) -> tuple[float, float]:
    text = httpx.get(base + "/metrics", timeout=30).text

    def value(name: str) -> float:
        m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    return value("featcache_forward_batch_size_count"), value("featcache_forward_batch_size_sum")


def bench_one(head: Path, batch_size: int, wait_ms: float, uploads: list[bytes],
              clients: int, log: Path) -> dict[str, float]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FEATCACHE_FEATURE_CACHE_BYTES": "0", "FEATCACHE_LOG_LEVEL": "warning"}
    env.pop("FEATCACHE_API_KEY", None)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "--head", str(head), "--host", "127.0.0.1",
             "--port", str(port), "--max-batch-size", str(batch_size),
             "--max-wait-ms", str(wait_ms)],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"serve exited ({proc.returncode}); see {log}")
            try:
                if httpx.get(base + "/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"serve not ready in 180 s; see {log}")
            time.sleep(0.3)
        asyncio.run(load(base, uploads[:clients], clients))  # warm the connections
        _, single = asyncio.run(load(base, uploads[: max(8, len(uploads) // 8)], 1))
        passes0, images0 = forward_stats(base)
        elapsed, lat = asyncio.run(load(base, uploads, clients))
        passes1, images1 = forward_stats(base)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    lat.sort()
    return {
        "batch": batch_size,
        "throughput": len(uploads) / elapsed,
        "p50_ms": statistics.median(lat) * 1000,
        "p95_ms": lat[int(0.95 * (len(lat) - 1))] * 1000,
        "mean_batch": (images1 - images0) / max(passes1 - passes0, 1),
        "single_ms": statistics.median(single) * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--head", type=Path, help="head folder (default: train a small one)")
    p.add_argument("--images", type=Path, default=SHARED / "data/elpv/validation",
                   help="image folder (class sub-folders) to upload")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--wait-ms", type=float, default=2.0, help="FEATCACHE_MAX_WAIT_MS")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients")
    p.add_argument("--requests", type=int, default=96, help="requests per configuration")
    args = p.parse_args(argv)
    if not 1 <= args.clients <= 64 or not 1 <= args.requests <= 1000:
        p.error("keep the load bounded: 1..64 clients, 1..1000 requests")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Offline machines: the shared copy of the ImageNet weights, unless told otherwise.
    if "FEATCACHE_WEIGHTS" not in os.environ and (SHARED / "assets/vgg16_notop.h5").is_file():
        os.environ["FEATCACHE_WEIGHTS"] = str(SHARED / "assets/vgg16_notop.h5")
    files = sorted(f for f in args.images.rglob("*") if f.suffix.lower() in (".png", ".jpg"))
    uploads = [f.read_bytes() for f in files[: args.requests]]
    with tempfile.TemporaryDirectory() as tmp:
        head = args.head or make_head(args.images, Path(tmp))
        log = Path(tmp) / "serve.log"
        print(f"{len(uploads)} requests, {args.clients} clients, max_wait_ms={args.wait_ms}, "
              f"{os.cpu_count()} CPUs")
        print("| max_batch_size | images/s | p50 ms | p95 ms | mean batch | 1 client p50 ms |")
        print("|---|---|---|---|---|---|")
        for bs in args.batch_sizes:
            r = bench_one(head, bs, args.wait_ms, uploads, args.clients, log)
            print(f"| {bs} | {r['throughput']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
                  f"{r['mean_batch']:.1f} | {r['single_ms']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
