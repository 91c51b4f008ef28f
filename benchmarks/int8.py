"""int8 vs fp32 (issue 12): speed against the Keras recipe, fidelity, accuracy, serving latency.

Parts (all by default; `--parts speed,fidelity` picks some), each measured side by side in one
run and printed as ratios, with the CPU and its int8-relevant flags:

    speed     whole-process wall time on --dir: the Keras recipe (keras_recipe.py
              --extract-only), `extract` fp32, `extract --precision int8` (its model built
              beforehand by a warm-up run, whose time is printed apart); targets: int8 >= 3x
              the recipe on a CPU with VNNI
    threads   `extract --precision int8` with each --workers x --threads pair of --sweep
    decode    CPU cost of decoding one image vs one int8 / fp32 forward pass (per image), the
              balance behind --workers and --threads
    fidelity  cosine of int8 to fp32 features on every image of --val (maps and pooled vectors;
              --calibration DIR adds a model calibrated on DIR, --portable the portable-scheme
              model a team of mixed CPUs shares, where this CPU's default is s8); target >=
              0.99 on every image
    accuracy  default head (train-head) on train/val caches of each precision; target: int8
              within 1 point of fp32
    serve     /predict p50 of `serve --precision int8` with an int8 head vs `serve` fp32 with an
              fp32 head, distinct real images, one client; target int8 <= 0.4x fp32

    .venv/bin/python benchmarks/int8.py [--parts ...] [--limit N] [--requests 60]

Speed figures need a quiet machine; fidelity and accuracy do not depend on load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import BIN, ELPV, PEER, WEIGHTS, machine, run_extract, run_json

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
PARTS = ("speed", "threads", "decode", "fidelity", "accuracy", "serve")


def cpu_line() -> str:
    from extractor.runtimes.cpu import detect
    from extractor.runtimes.int8 import scheme_for

    info = detect()
    return f"{info.describe()}; int8 weight scheme here: {scheme_for(info).name}"


def subset(src: Path, dst: Path, limit: int | None) -> Path:
    """`src` itself, or a folder of symlinks to its first `limit` files per class."""
    if not limit:
        return src
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:limit]:
            (dst / cls.name / f.name).symlink_to(f.resolve())
    return dst


def timed(fn, *args, **kw):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def part_speed(folder: Path, tmp: Path, timeout: float) -> None:
    n = sum(1 for _ in folder.glob("*/*"))
    common = ["--dir", str(folder), "--weights", str(WEIGHTS), "--quiet"]
    _, warm = timed(run_extract_quiet, [*common, "--out", str(tmp / "warm.h5"),
                                        "--precision", "int8"], timeout)
    print(f"int8 warm-up (builds the int8 model once if this machine has none): {warm:.1f} s",
          flush=True)
    _, peer = timed(run_json, [sys.executable, str(PEER), "--weights", str(WEIGHTS),
                               "--train", str(folder), "--extract-only"], timeout)
    _, fp32 = timed(run_extract_quiet, [*common, "--out", str(tmp / "fp32.h5")], timeout)
    _, int8 = timed(run_extract_quiet, [*common, "--out", str(tmp / "int8.h5"),
                                        "--precision", "int8"], timeout)
    row = {"images": n, "peer_s": round(peer, 2), "fp32_s": round(fp32, 2),
           "int8_s": round(int8, 2)}
    print(json.dumps(row))
    print(f"whole process, {n} images: Keras recipe {n / peer:.1f} img/s, extract fp32 "
          f"{n / fp32:.1f}, extract int8 {n / int8:.1f}")
    print(f"int8 / recipe {peer / int8:.2f}x (target >= 3x with VNNI); fp32 / recipe "
          f"{peer / fp32:.2f}x; int8 / fp32 {fp32 / int8:.2f}x", flush=True)


def run_extract_quiet(args: list[str], timeout: float) -> None:
    proc = subprocess.run([str(BIN / "extract"), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"extract {' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def part_threads(folder: Path, tmp: Path, sweep: str, timeout: float) -> None:
    for i, pair in enumerate(sweep.split(",")):
        workers, threads = pair.split("x")
        out = tmp / f"t{i}-{workers}-{threads}.h5"  # a new cache each time: nothing to resume
        r = run_extract(["--dir", str(folder), "--weights", str(WEIGHTS), "--out", str(out),
                         "--precision", "int8", "--workers", workers, "--threads", threads],
                        timeout)
        print(f"--workers {workers} --threads {threads}: {r['img_per_s']:.1f} img/s loop, "
              f"{r['total_s']:.1f} s in all", flush=True)


def part_decode(folder: Path) -> None:
    from extractor.backbone import ConvBase
    from extractor.images import decode_image

    files = sorted(folder.glob("*/*"))[:64]
    data = [f.read_bytes() for f in files]
    t = time.thread_time()
    pixels = np.stack([decode_image(d, 150) for d in data])
    decode = (time.thread_time() - t) / len(data) * 1000
    print(f"decode + resize: {decode:.2f} ms CPU per image ({len(data)} files)")
    for precision in ("fp32", "int8"):
        base = ConvBase(WEIGHTS, precision=precision, threads=1)
        base(pixels[:16])
        t = time.thread_time()
        for i in range(0, len(pixels), 16):
            base(pixels[i:i + 16])
        ms = (time.thread_time() - t) / len(pixels) * 1000
        print(f"{precision} forward pass, 1 thread: {ms:.1f} ms CPU per image; decoding is "
              f"{decode / (decode + ms):.0%} of the work per image", flush=True)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def part_fidelity(val: Path, calibration: Path | None, portable: bool) -> None:
    from extractor.backbone import ConvBase
    from extractor.images import decode_image

    pooled = ("block3_pool", "block4_pool", "block5_pool")
    files = sorted(val.glob("*/*"))
    fp32 = ConvBase(WEIGHTS, runtime="onnxruntime", pooled_layers=pooled)
    bases = {"int8 (bundled photos)": ConvBase(WEIGHTS, precision="int8", pooled_layers=pooled)}
    if calibration is not None:
        bases[f"int8 (--calibration {calibration})"] = ConvBase(
            WEIGHTS, precision="int8", pooled_layers=pooled, calibration=calibration)
    if portable:
        from extractor.runtimes.int8 import WEIGHTS_ENV

        os.environ[WEIGHTS_ENV] = "portable"
        try:
            bases["int8, portable weights"] = ConvBase(
                WEIGHTS, precision="int8", pooled_layers=pooled)
        finally:
            del os.environ[WEIGHTS_ENV]
    cos: dict[str, dict[str, list[float]]] = {k: {} for k in bases}
    for i in range(0, len(files), 16):
        pixels = np.stack([decode_image(f.read_bytes(), 150) for f in files[i:i + 16]])
        ref = fp32(pixels)
        for label, base in bases.items():
            ours = base(pixels)
            for name in ours:
                cos[label].setdefault(name, []).extend(cosines(ours[name], ref[name]))
    for label, by_name in cos.items():
        print(f"{label}, {len(files)} images of {val}: cosine to fp32 (min / mean)")
        for name, values in by_name.items():
            v = np.asarray(values)
            print(f"  {name:16s} {v.min():.4f} / {v.mean():.4f}"
                  f"{'' if v.min() >= 0.99 else '  BELOW 0.99'}", flush=True)


def part_accuracy(train: Path, val: Path, tmp: Path, timeout: float) -> None:
    for precision in ("fp32", "int8"):
        caches = {}
        for name, folder in (("train", train), ("val", val)):
            caches[name] = tmp / f"acc-{precision}-{name}.h5"
            run_extract_quiet(["--dir", str(folder), "--weights", str(WEIGHTS), "--out",
                               str(caches[name]), "--precision", precision, "--quiet"], timeout)
        head = tmp / f"head-{precision}"
        proc = subprocess.run(
            [str(BIN / "train-head"), "--cache", str(caches["train"]), "--val-cache",
             str(caches["val"]), "--out", str(head), "-q", "--json"],
            capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        chosen = json.loads(proc.stdout).get("selection") or {}
        if chosen:
            print(f"{precision}: default head CV accuracy on the training cache "
                  f"{chosen['cv_accuracy_mean']:.4f} ± {chosen['cv_accuracy_std']:.4f} "
                  f"({chosen['folds']}-fold, {chosen['candidates']} settings)", flush=True)
        proc = subprocess.run([str(BIN / "evaluate"), "--head", str(head), "--cache",
                               str(caches["val"]), "--json"], capture_output=True, text=True,
                              timeout=timeout, check=True)
        res = json.loads(proc.stdout)
        print(f"{precision}: default head validation accuracy {res['accuracy']:.4f} "
              f"({precision} train and validation caches)", flush=True)


def part_serve(tmp: Path, requests: int, timeout: float) -> None:
    import httpx
    from _serve import DistinctImages, serving

    folder = subset(ELPV / "train", tmp / "serve-images", 20)
    p50 = {}
    for precision in ("fp32", "int8"):
        cache, head = tmp / f"serve-{precision}.h5", tmp / f"serve-head-{precision}"
        run_extract_quiet(["--dir", str(folder), "--weights", str(WEIGHTS), "--out", str(cache),
                           "--precision", precision], timeout)
        proc = subprocess.run([str(BIN / "train-head"), "--cache", str(cache), "--out", str(head),
                               "--val-split", "0.25", "-q"], capture_output=True, text=True,
                              timeout=timeout, check=False)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        images = DistinctImages()
        with (serving(head, "--precision", precision) as url,
              httpx.Client(base_url=url, timeout=60) as client):

            stages: list[dict[str, float]] = []

            def post(data: bytes, stages: list[dict[str, float]] = stages) -> float:
                t = time.perf_counter()
                r = client.post("/predict", files={"file": ("img.png", data, "image/png")})
                r.raise_for_status()
                stages.append(r.json()["timings_ms"])
                return (time.perf_counter() - t) * 1000

            for _ in range(5):
                post(images.next())
            del stages[:]
            p50[precision] = statistics.median(post(images.next()) for _ in range(requests))
        # Where the time goes, as the server reports it (the response's timings_ms): what is
        # not the forward pass is the same work at either precision.
        parts = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
        rest = p50[precision] - parts["total"]
        print(f"serve --precision {precision}: /predict p50 {p50[precision]:.1f} ms "
              f"({requests} distinct images, one client); server medians: "
              + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
              + f"; outside the prediction (HTTP, multipart, client) ~{rest:.1f} ms", flush=True)
    print(f"int8 / fp32 p50: {p50['int8'] / p50['fp32']:.2f} (target <= 0.4)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--dir", type=Path, default=ELPV / "train")
    ap.add_argument("--val", type=Path, default=ELPV / "validation")
    ap.add_argument("--limit", type=int, default=None,
                    help="speed/threads/decode: only the first N files per class (smoke tests)")
    ap.add_argument("--sweep", default="1x2,2x2,2x1,3x2",
                    help="threads part: WORKERSxTHREADS pairs (default: %(default)s)")
    ap.add_argument("--calibration", type=Path, default=None,
                    help="fidelity: also a model calibrated on this folder")
    ap.add_argument("--portable", action="store_true",
                    help="fidelity: also the portable model (FEATCACHE_INT8_WEIGHTS=portable)")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args()
    parts = args.parts.split(",")
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")

    print(f"machine: {machine()}")
    print(f"CPU: {cpu_line()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="featcache-int8-") as name:
        tmp = Path(name)
        folder = subset(args.dir, tmp / "images", args.limit)
        if "speed" in parts:
            part_speed(folder, tmp, args.timeout)
        if "threads" in parts:
            part_threads(folder, tmp, args.sweep, args.timeout)
        if "decode" in parts:
            part_decode(folder)
        if "fidelity" in parts:
            part_fidelity(args.val, args.calibration, args.portable)
        if "accuracy" in parts:
            part_accuracy(args.dir, args.val, tmp, args.timeout)
        if "serve" in parts:
            part_serve(tmp, args.requests, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
