"""Helpers shared by the benchmark scripts: the machine, the sgemm ceiling, child processes.

Benchmarks are scripts (run them with the project's Python), never unit tests: timings on
shared machines drift, so every script measures what it compares side by side in one run and
prints the ratio.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FEATCACHE_SHARED", REPO.parent / "shared"))
WEIGHTS = SHARED / "assets" / "vgg16_notop.h5"
ELPV = SHARED / "data" / "elpv"
PEER = SHARED / "bench" / "keras_recipe.py"
#: Multiply-adds x 2 of the VGG16 conv base on one 150x150 image (6.6 G MACs).
GFLOP_PER_IMAGE = 13.2
BIN = Path(sys.executable).parent


def machine() -> str:
    """One line naming the machine: CPU model and family, cores, SIMD level, memory, load."""
    model = family = ""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key == "cpu family" and not family:
                family = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        model = platform.processor()
    simd = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "no avx2"
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    try:
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text()
                      .splitlines() if line.startswith("MemTotal"))
        mem = f"{mem_kb / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        mem = "? GiB"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{model or 'unknown CPU'} (family {family or '?'}), {cpus} CPUs, {simd}, {mem}, "
            f"load {load:.1f} at start; Python {platform.python_version()}")


def sgemm_gflops(seconds: float = 5.0, n: int = 2048) -> float:
    """numpy float32 matrix product throughput on all cores, in GFLOP/s (median of repeats)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    rates = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        rates.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
    return statistics.median(rates)


def run_json(cmd: list[str], timeout: float) -> dict:
    """Run a command that prints one JSON line last; return that line parsed."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")][-1]
    return dict(json.loads(last))


_RATE = re.compile(r"extracted:\s+(\d+) images at ([\d.]+) images/s \(([\d.]+)s in all")


def run_extract(args: list[str], timeout: float) -> dict[str, float]:
    """Run the `extract` CLI; return images, loop images/s (its own figure), total seconds."""
    cmd = [str(BIN / "extract"), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    m = _RATE.search(out)
    if m is None:
        raise RuntimeError(f"no summary in extract's output:\n{out[-2000:]}")
    return {"images": int(m[1]), "img_per_s": float(m[2]), "total_s": float(m[3])}


def peak_rss_mib(cmd: list[str], timeout: float) -> tuple[float, float, str]:
    """Run `cmd`; return (peak RSS of that process in MiB, wall seconds, stdout)."""
    t = time.perf_counter()
    with open(os.devnull, "w") as devnull:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=devnull, text=True)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"{' '.join(cmd)} ran past {timeout}s")
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t, out
