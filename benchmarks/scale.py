#!/usr/bin/env python3
"""Scale (issue 19): what a cache of N rows costs to keep up to date, for each N.

For each size N (default 10,000 and 100,000) in a folder of its own under --work:

1. a labelled folder of N small JPEGs: `--distinct` ELPV images (150x150) hard-linked over and
   over (equal bytes: one forward pass each, but a row per file), so N files take the disk of
   a few dozen;
2. `extract` it (the real conv base, default layers: block5_pool maps + block3/4/5 pooled);
3. re-run on the unchanged folder: seconds and files/s (a scan of file metadata only);
4. add 1% new files (each with bytes of its own: a forward pass each) and re-run: seconds,
   bytes the process wrote (/proc/self/io write_bytes, and wchar: bytes passed to write()),
   the cache's size on disk before and after; then the same for 10 new files;
5. delete 1% and re-run (dead rows), then `featcache compact`: seconds, bytes written.

Prints one JSON line per size and a table. Extraction runs in this process (runner.run), so the
I/O counters are this process's own.

    python benchmarks/scale.py [--sizes 10000,100000] [--work /tmp/scale] [--distinct 64]
"""

from __future__ import annotations

import argparse
import hashlib
import io as iolib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import ELPV, WEIGHTS, machine
from PIL import Image

CLASSES = ("defective", "functional")


def proc_io() -> dict[str, int]:
    rows = Path("/proc/self/io").read_text().splitlines()
    return {k: int(v) for k, v in (line.split(": ") for line in rows)}


def jpeg(src: Path, comment: bytes = b"") -> bytes:
    img = Image.open(src).convert("RGB").resize((150, 150))
    buf = iolib.BytesIO()
    img.save(buf, "JPEG", quality=90, comment=comment)
    return buf.getvalue()


def make_folder(root: Path, n: int, distinct: int) -> list[Path]:
    """N files in two class folders: hard links of `distinct` JPEGs. Returns the sources."""
    sources = sorted((ELPV / "train" / CLASSES[0]).iterdir())[: distinct // 2] + sorted(
        (ELPV / "train" / CLASSES[1]).iterdir())[: distinct - distinct // 2]
    base = root / "distinct"
    base.mkdir(parents=True, exist_ok=True)
    made = []
    for i, src in enumerate(sources):
        p = base / f"{i:03d}.jpg"
        p.write_bytes(jpeg(src))
        made.append(p)
    old = time.time_ns() - 3600 * 10**9  # an hour old: no file counts as just modified
    for p in made:
        os.utime(p, ns=(old, old))
    for c in CLASSES:
        (root / "imgs" / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        os.link(made[i % len(made)], root / "imgs" / CLASSES[i % 2] / f"f{i:07d}.jpg")
    return sources


def add_new(root: Path, count: int, sources: list[Path], tag: str) -> None:
    old = time.time_ns() - 3600 * 10**9
    for i in range(count):
        p = root / "imgs" / CLASSES[i % 2] / f"{tag}{i:06d}.jpg"
        p.write_bytes(jpeg(sources[i % len(sources)], f"{tag} {i}".encode()))
        os.utime(p, ns=(old, old))


class RealFeatureLookup:
    """The conv base's real features for the pixels of the distinct images, computed once and
    then looked up by pixels: every row holds real features (real sizes on disk) while the
    loop costs no forward pass. Forward-pass cost per image: BENCHMARKS.md, Target 1."""

    def __init__(self, conv_base: Any, files: list[Path]) -> None:
        from extractor.images import decode_image

        self.table: dict[bytes, dict[str, np.ndarray]] = {}
        for p in files:
            px = decode_image(p.read_bytes(), 150)
            feats = conv_base(px[None])
            self.table[hashlib.sha1(px.tobytes()).digest()] = {k: v[0] for k, v in feats.items()}

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        rows = [self.table[hashlib.sha1(px.tobytes()).digest()] for px in pixels]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def timed(fn, *args, **kw):  # type: ignore[no-untyped-def]
    before = proc_io()
    t = time.perf_counter()
    result = fn(*args, **kw)
    elapsed = time.perf_counter() - t
    after = proc_io()
    return result, elapsed, {k: after[k] - before[k] for k in ("write_bytes", "wchar")}


def one_size(n: int, work: Path, distinct: int, conv_base: Any, train: list[str] | None
             ) -> dict[str, object]:
    from extractor.cache.rows import compact, disk_bytes
    from extractor.planner import Options, lock_output
    from extractor.runner import run

    root = work / str(n)
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    sources = make_folder(root, n, distinct)
    res: dict[str, object] = {"rows": n, "make_folder_s": round(time.perf_counter() - t, 1),
                              "load_at_start": round(os.getloadavg()[0], 1)}
    t = time.perf_counter()
    features = RealFeatureLookup(conv_base, sorted((root / "distinct").iterdir()))
    res["forward_s_per_image"] = round((time.perf_counter() - t) / distinct, 3)  # batches of 1
    out = root / "feats.h5"
    opts = Options(directory=root / "imgs", out=out, weights=str(WEIGHTS), progress=False)

    s, sec, _ = timed(run, opts, features)
    res.update(first_extract_s=round(sec, 1), cache_mb=round(disk_bytes(out) / 1e6, 1),
               bytes_per_row=round(disk_bytes(out) / n))

    s, sec, w = timed(run, opts, features)
    assert s.extracted == 0 and s.already_cached == n
    res.update(unchanged_s=round(sec, 2), unchanged_files_per_s=round(n / sec),
               unchanged_write_bytes=w["write_bytes"])

    add = max(1, n // 100)
    add_new(root, add, sources, "new")
    size_before = disk_bytes(out)
    s, sec, w = timed(run, opts, features)
    assert s.extracted == add, s
    res.update(add_1pct_files=add, add_1pct_s=round(sec, 1),
               add_1pct_write_mb=round(w["write_bytes"] / 1e6, 2),
               add_1pct_wchar_mb=round(w["wchar"] / 1e6, 2),
               add_1pct_share_of_cache=round(w["wchar"] / size_before, 4),
               cache_mb_after_add=round(disk_bytes(out) / 1e6, 1),
               add_1pct_images_per_s=round(s.images_per_s, 1))

    add_new(root, 10, sources, "ten")
    size_before = disk_bytes(out)
    s, sec, w = timed(run, opts, features)
    assert s.extracted == 10, s
    res.update(add_10_s=round(sec, 2), add_10_wchar_mb=round(w["wchar"] / 1e6, 2),
               add_10_share_of_cache=round(w["wchar"] / size_before, 4))
    if train is not None:
        res.update(train_head(out, root, train))
    gone = sorted((root / "imgs" / CLASSES[0]).iterdir())[: n // 100]
    for p in gone:
        p.unlink()
    s, sec, w = timed(run, opts, features)
    res.update(delete_1pct_s=round(sec, 2), delete_1pct_wchar_mb=round(w["wchar"] / 1e6, 2))

    def do_compact() -> object:
        with lock_output(out):
            return compact(out)

    c, sec, w = timed(do_compact)
    res.update(compact_s=round(sec, 1), compact_wchar_mb=round(w["wchar"] / 1e6, 1),
               compact_dead_rows=c.dead_rows, cache_mb_compacted=round(c.bytes_after / 1e6, 1))
    return res


def train_head(cache: Path, root: Path, extra: list[str]) -> dict[str, object]:
    """`train-head` with its defaults, in a child process: seconds and peak RSS."""
    import resource
    import subprocess

    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "classifier.cli", "--cache", str(cache),
                           "--out", str(root / "head"), "--quiet", *extra],
                          capture_output=True)
    sec = time.perf_counter() - t
    if proc.returncode != 0:
        return {"train_head_error": proc.stderr.decode()[-500:]}
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"train_head_s": round(sec, 1), "train_head_peak_rss_mb": round(rss / 1e6)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--work", type=Path, default=Path("/tmp/featcache-scale"))
    ap.add_argument("--distinct", type=int, default=64)
    ap.add_argument("--keep", action="store_true", help="keep the folders and caches")
    ap.add_argument("--train-head", nargs="?", const="", default=None, metavar="ARGS",
                    help="also time train-head on each cache, with its peak RSS (ARGS: extra "
                    "flags, e.g. '--cv-rows 10000')")
    args = ap.parse_args()
    from extractor.backbone import ConvBase
    from extractor.features import DEFAULT_POOLED_LAYERS

    print(machine(), file=sys.stderr)
    conv_base = ConvBase(WEIGHTS, pooled_layers=DEFAULT_POOLED_LAYERS)
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        train = None if args.train_head is None else args.train_head.split()
        res = one_size(n, args.work, args.distinct, conv_base, train)
        print(json.dumps(res), flush=True)
        results.append(res)
        if not args.keep:
            shutil.rmtree(args.work / str(n), ignore_errors=True)


if __name__ == "__main__":
    main()
