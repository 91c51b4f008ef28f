"""The two images side by side: their sizes, and their cold start (container start to /ready 200)
serving the same scikit-learn head.

    full   docker/Dockerfile's default target: TensorFlow, Keras, matplotlib and the rest
    serve  the lean target: ONNX Runtime and scikit-learn only (requirements/serve.txt)

Build both first, offline as here (the weights mounted, not in the images):

    FEATCACHE_WEIGHTS_FILE=../shared/assets/vgg16_notop.h5 docker compose build
    python benchmarks/image_cold_start.py [--head heads/head] [--runs 3]

Each run is a fresh container (`docker run -d`, the head and the weights mounted read-only, as
compose mounts them, and compose's limits: 2 CPUs, 2 GiB), polled every 50 ms until /ready
answers 200; it is then removed. Two cases per image:

    export made    FEATCACHE_HOME empty: the first start of an offline deployment builds the
                   ONNX graph of the conv base from the weights file, then loads it
    export present FEATCACHE_HOME holds that export (an online build, or any later start of
                   compose's api, whose export lives in a volume)

Reported: the median of --runs of each, from `docker run` to /ready (what a user waits) and from
the container's start (State.StartedAt, so without the engine's create time) to /ready; and the
load average before each case, since cold start depends on what else the CPUs do. Sizes are
`docker image inspect`'s Size (uncompressed), which does not depend on load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from _common import WEIGHTS, machine
from _serve import free_port, make_head

IMAGES = {"full": "featcache:latest", "serve": "featcache:serve"}


def docker(*args: str, timeout: float = 120) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed ({proc.returncode}): "
                           f"{proc.stderr[-2000:]}")
    return proc.stdout.strip()


def image_size(image: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", image))


def _started_at(container: str) -> float:
    """The container's State.StartedAt as a Unix time (RFC 3339 with nanoseconds)."""
    text = docker("inspect", "--format", "{{.State.StartedAt}}", container)
    # 2026-11-30T05:00:22.123456789Z or ...+00:00: keep microseconds, which fromisoformat reads.
    head, _, frac = text.partition(".")
    digits = "".join(c for c in frac if c.isdigit())
    zone = frac[len(digits):] or "Z"
    stamp = dt.datetime.fromisoformat(f"{head}.{digits[:6].ljust(6, '0')}"
                                      f"{'+00:00' if zone == 'Z' else zone}")
    return stamp.timestamp()


def cold_start(image: str, head: Path, weights: Path, home: Path, timeout: float) -> dict:
    """One fresh container to /ready 200; returns the seconds from `docker run` and from the
    container's start, and the log line saying where the conv base came from."""
    port = free_port()
    t0 = time.time()
    container = docker(
        "run", "-d", "--cpus", "2", "--memory", "2g",
        "-p", f"127.0.0.1:{port}:8000",
        "-v", f"{weights}:/weights/vgg16_notop.h5:ro",
        "-v", f"{head}:/heads/{head.name}:ro",
        "-v", f"{home}:/featcache-home",
        "-e", "FEATCACHE_HOME=/featcache-home",
        image, "serve", "--host", "0.0.0.0", "--port", "8000", "--head", f"/heads/{head.name}",
    )
    try:
        deadline = t0 + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.time() > deadline:
                logs = docker("logs", container)
                raise TimeoutError(f"{image}: not ready in {timeout:.0f}s:\n{logs[-3000:]}")
            time.sleep(0.05)
        ready = time.time()
        logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True,
                              timeout=60, check=False)
        origin = next((line.split(" from ")[-1] for line in
                       (logs.stdout + logs.stderr).splitlines()
                       if "loaded VGG16 conv base" in line), "?")
        return {"run_to_ready_s": ready - t0,
                "start_to_ready_s": ready - _started_at(container),
                "onnx_from": origin}
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=120,
                       check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--head", type=Path, help="a scikit-learn head folder (default: train a "
                    "small logreg head on real ELPV images first)")
    ap.add_argument("--weights", type=Path, default=WEIGHTS)
    ap.add_argument("--full-image", default=IMAGES["full"])
    ap.add_argument("--serve-image", default=IMAGES["serve"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300, help="seconds a start may take")
    args = ap.parse_args()
    if not 1 <= args.runs <= 20:
        ap.error("--runs must be between 1 and 20")
    images = {"full": args.full_image, "serve": args.serve_image}

    print(machine())
    flags = subprocess.run("grep -o 'avx512_vnni\\|avx512f\\|avx2' /proc/cpuinfo | sort -u",
                           shell=True, capture_output=True, text=True, check=False)
    print("CPU flags:", " ".join(flags.stdout.split()) or "none of avx2/avx512f/avx512_vnni")

    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp_name:
        tmp = Path(tmp_name)
        tmp.chmod(0o755)  # the containers run as uid 10001 and read the head through it
        head = args.head.resolve() if args.head else make_head(tmp)
        mounted = tmp / "heads" / head.name  # a world-readable copy: the server is uid 10001
        shutil.copytree(head, mounted)
        for path in [tmp / "heads", mounted, *mounted.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)

        result: dict = {"sizes": {}, "cold_start": {}}
        for kind, image in images.items():
            result["sizes"][kind] = image_size(image)
        for kind, image in images.items():
            for case in ("export made", "export present"):
                load = os.getloadavg()
                runs = []
                present = tmp / f"home-{kind}"
                for i in range(args.runs):
                    home = tmp / f"home-{kind}-{i}" if case == "export made" else present
                    home.mkdir(exist_ok=True)
                    home.chmod(0o777)  # written by uid 10001 inside
                    runs.append(cold_start(image, mounted, args.weights.resolve(), home,
                                           args.timeout))
                    if case == "export made" and i == 0:  # keep one export for the next case
                        shutil.copytree(home, present, dirs_exist_ok=True)
                        for path in [present, *present.rglob("*")]:
                            path.chmod(0o777 if path.is_dir() else 0o666)
                result["cold_start"][f"{kind}, {case}"] = {
                    "image": image,
                    "load_before": [round(x, 2) for x in load],
                    "run_to_ready_s": [round(r["run_to_ready_s"], 2) for r in runs],
                    "start_to_ready_s": [round(r["start_to_ready_s"], 2) for r in runs],
                    "median_run_to_ready_s": round(statistics.median(
                        r["run_to_ready_s"] for r in runs), 2),
                    "median_start_to_ready_s": round(statistics.median(
                        r["start_to_ready_s"] for r in runs), 2),
                    "onnx_from": sorted({str(Path(r["onnx_from"]).parent)
                                         for r in runs}),
                }

    print()
    print(f"{'image':<8} {'tag':<22} {'size':>10}")
    for kind, image in images.items():
        print(f"{kind:<8} {image:<22} {result['sizes'][kind] / 1e6:>8.0f} MB")
    print()
    print(f"cold start, median of {args.runs} fresh containers each (seconds to /ready 200):")
    print(f"{'case':<24} {'docker run':>11} {'start':>7}   runs (docker run)      load before")
    for case, c in result["cold_start"].items():
        runs = ", ".join(f"{x:.2f}" for x in c["run_to_ready_s"])
        load = " ".join(f"{x:.2f}" for x in c["load_before"])
        print(f"{case:<24} {c['median_run_to_ready_s']:>11.2f} {c['median_start_to_ready_s']:>7.2f}"
              f"   {runs:<22} {load}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
