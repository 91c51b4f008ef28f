"""Writing caches: a whole cache from memory (`write_cache`), the datasets every cache-like
file has (`write_rows`), and copying rows from open source files into a new file (`copy_rows`,
used when checkpoints or row files are folded into a cache)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from numpy.typing import NDArray

from extractor.atomic import atomic_h5
from extractor.cache.layout import (
    as_features,
    create_dataset,
    feature_datasets,
    label_dims,
    read_rows,
    set_attrs,
    write_stats,
    write_strings,
)
from extractor.features import Features
from extractor.spec import FeatureSpec
from extractor.walk import UNKNOWN, FileStat


def write_cache(
    path: str | os.PathLike[str],
    features: Features | NDArray[np.float32],
    labels: Sequence[int] | NDArray[np.integer],
    paths: Sequence[str],
    spec: FeatureSpec,
    class_names: Sequence[str] = (),
    sha256: Sequence[str] | None = None,
    skipped: Sequence[tuple[str, str]] = (),
    extra_attrs: Mapping[str, Any] | None = None,
    views: Sequence[int] | NDArray[np.integer] | None = None,
    file_stats: Sequence[FileStat] | None = None,
) -> Path:
    """Write a complete cache from in-memory arrays (small sets, tests, synthetic data).

    `features`: the named features of `spec` ({name: (N, ...) array}), or an array of the main
    maps alone (the main layer's poolings are then derived from them)."""
    path = Path(path)
    n = len(paths)
    feats = as_features(features, spec, n)
    with atomic_h5(path) as f:
        set_attrs(f, spec, class_names, extra_attrs or {})
        write_rows(f, spec, feats, paths, sha256 if sha256 is not None else [""] * n, skipped,
                   file_stats)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.int32).reshape(n))
        f.create_dataset("view", data=np.asarray(views if views is not None else np.zeros(n),
                                                 dtype=np.int16).reshape(n))
        label_dims(f, spec)
    return path


def write_rows(
    f: h5py.File,
    spec: FeatureSpec,
    features: Features | NDArray[np.float32],
    paths: Sequence[str],
    sha256: Sequence[str],
    skipped: Sequence[tuple[str, str]],
    file_stats: Sequence[FileStat] | None = None,
) -> None:
    """The datasets every cache-like file has: the named features, paths, sha256, file stats
    and /skipped."""
    n = len(paths)
    feats = as_features(features, spec, n)
    for name, (path, shape) in feature_datasets(spec).items():
        ds = create_dataset(f, path, n, shape)
        if n:
            ds[:] = feats[name]
    write_strings(f, "paths", paths)
    write_strings(f, "sha256", sha256)
    write_stats(f, "", file_stats if file_stats is not None else [UNKNOWN] * n)
    grp = f.create_group("skipped")
    write_strings(grp, "paths", [p for p, _ in skipped])
    write_strings(grp, "reasons", [r for _, r in skipped])


@dataclasses.dataclass
class Row:
    path: str
    sha256: str
    view: int
    source: int  # index into the list of open source files
    index: int  # row in that source's features


def copy_rows(
    dest: h5py.Dataset, rows: list[Row], sources: list[h5py.File], name: str
) -> None:
    """dest[k] = rows[k]'s row of dataset `name` in its source, a few chunks at a time."""
    # 8 chunks (~8 MiB) at a time: enough for fast sequential I/O, small enough that folding a
    # run into the cache adds little to extract's peak memory (BENCHMARKS.md, target 2).
    step = 8 * (dest.chunks[0] if dest.chunks else 1)
    for start in range(0, len(rows), step):
        block = rows[start : start + step]
        out = np.empty((len(block), *dest.shape[1:]), dtype=np.float32)
        by_source: dict[int, list[int]] = {}
        for k, row in enumerate(block):
            by_source.setdefault(row.source, []).append(k)
        for src, ks in by_source.items():
            idx = np.array([block[k].index for k in ks], dtype=np.int64)
            order = np.argsort(idx, kind="stable")
            data = read_rows(sources[src][name], idx[order])
            out[np.array(ks)[order]] = data
        dest[start : start + len(block)] = out
