#!/usr/bin/env python3
"""Size and speed of HDF5 compression filters on real cached VGG16 features.

usage: python benchmarks/cache_compression.py CACHE.h5 [--repeat 3] [--pooled]

Rewrites the cache's features with each filter (chunks of 1 MiB, as the extractor writes them)
and prints one line per filter: compression ratio, write MB/s and read MB/s (uncompressed MB).
With --pooled, the pooled vectors (every /pooled/<layer>/avg|max dataset) instead of the maps.
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
    ("lzf (h5py only)", {"compression": "lzf"}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cache")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pooled", action="store_true",
                    help="measure the pooled vectors (/pooled/...) instead of the maps")
    args = ap.parse_args()
    with h5py.File(args.cache, "r") as f:
        if args.pooled:
            names: list[str] = []
            f["pooled"].visititems(lambda name, obj: names.append(f"pooled/{name}")
                                   if isinstance(obj, h5py.Dataset) else None)
            arrays = {name: f[name][:] for name in names}
        else:
            arrays = {"features": f["features"][:]}
    raw = sum(a.nbytes for a in arrays.values())
    mb = raw / 1e6
    zeros = sum(float((a == 0).sum()) for a in arrays.values()) / (raw / 4)
    n = len(next(iter(arrays.values())))
    print(f"{n} rows of {', '.join(f'{k} {a.shape[1:]}' for k, a in arrays.items())} float32 = "
          f"{mb:.1f} MB ({raw / n:.0f} bytes per row); {zeros:.0%} zeros")
    print(f"{'filter':26s} {'ratio':>6s} {'write MB/s':>11s} {'read MB/s':>10s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in FILTERS:
            path = os.path.join(tmp, "x.h5")
            w, r = [], []
            for _ in range(args.repeat):
                t = time.perf_counter()
                with h5py.File(path, "w") as f:
                    for key, a in arrays.items():
                        rows = min(len(a), max(1, (1 << 20) // a[0].nbytes))
                        f.create_dataset(key, data=a, chunks=(rows, *a.shape[1:]), **kw)
                w.append(time.perf_counter() - t)
                t = time.perf_counter()
                with h5py.File(path, "r") as f:
                    back = {key: f[key][:] for key in arrays}
                r.append(time.perf_counter() - t)
                assert all(np.array_equal(back[k], a) for k, a in arrays.items())
            size = os.path.getsize(path)
            print(f"{name:26s} {raw / size:6.2f} {mb / min(w):11.0f} {mb / min(r):10.0f}"
                  f"   {size / n:8.0f} bytes per row")


if __name__ == "__main__":
    main()
