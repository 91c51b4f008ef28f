#!/usr/bin/env python3
"""Size and speed of HDF5 compression filters on real cached VGG16 features.

usage: python benchmarks/cache_compression.py CACHE.h5 [--repeat 3]

Rewrites the cache's features with each filter (chunks of 1 MiB, as the extractor writes them)
and prints one line per filter: compression ratio, write MB/s and read MB/s (uncompressed MB).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import h5py
import numpy as np

FILTERS: list[tuple[str, dict[str, object]]] = [
    ("none", {}),
    ("gzip-1", {"compression": "gzip", "compression_opts": 1}),
    ("gzip-1+shuffle", {"compression": "gzip", "compression_opts": 1, "shuffle": True}),
    ("gzip-4+shuffle", {"compression": "gzip", "compression_opts": 4, "shuffle": True}),
    ("gzip-9+shuffle", {"compression": "gzip", "compression_opts": 9, "shuffle": True}),
    ("lzf+shuffle (h5py only)", {"compression": "lzf", "shuffle": True}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cache")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with h5py.File(args.cache, "r") as f:
        feats = f["features"][:]
    mb = feats.nbytes / 1e6
    rows = max(1, (1 << 20) // (feats[0].nbytes))
    zeros = float((feats == 0).mean())
    print(f"{len(feats)} rows of {feats.shape[1:]} float32 = {mb:.1f} MB; {zeros:.0%} zeros")
    print(f"{'filter':26s} {'ratio':>6s} {'write MB/s':>11s} {'read MB/s':>10s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in FILTERS:
            path = os.path.join(tmp, "x.h5")
            w, r = [], []
            for _ in range(args.repeat):
                t = time.perf_counter()
                with h5py.File(path, "w") as f:
                    f.create_dataset("features", data=feats, chunks=(rows, *feats.shape[1:]), **kw)
                w.append(time.perf_counter() - t)
                t = time.perf_counter()
                with h5py.File(path, "r") as f:
                    back = f["features"][:]
                r.append(time.perf_counter() - t)
                assert np.array_equal(back, feats)
            ratio = feats.nbytes / os.path.getsize(path)
            print(f"{name:26s} {ratio:6.2f} {mb / min(w):11.0f} {mb / min(r):10.0f}")


if __name__ == "__main__":
    main()
