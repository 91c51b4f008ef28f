"""Shard files and their merge into one cache through an HDF5 virtual dataset.

A distributed run writes one shard per batch of files into `<cache>.shards/` (or a folder the
user names). A shard has the cache's layout without `labels`:

    /features         (K, H, W, C) float32, gzip level 1, the row of each path below
    /pooled/<layer>/avg|max  (K, C) float32: pooled vectors of the spec's pooled_layers
    /paths, /sha256   (K,) the files the rows belong to (relative to the extracted folder)
    /view             (K,) int16: 0 for an image, 1..V for its augmented views (as in a cache)
    /file_size, /file_mtime_ns  (K,) each file's size and mtime when read (-1: unknown)
    /skipped/paths    (M,) files that could not be used ...
    /skipped/reasons  (M,) ... and why
    attributes        format = featcache-shard/1, the feature spec and the views' settings

A plain cache (`featcache/1`) has the same datasets, so a previous self-contained cache can be
used as a shard too. `merge` writes the cache file itself: `labels`, `paths`, `sha256` and
`/skipped` as ordinary datasets, and `features` and every `pooled/...` dataset as virtual
datasets that map every row, in path order, onto a shard. Source file names are stored
relative to the cache file's folder, so the cache and its shards folder can be moved together,
never apart. A missing shard would read
back as NaN (the fill value) with no error from HDF5, so every shard is opened and checked
before the merged file is written, and `missing_sources` checks a merged file before use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from numpy.typing import NDArray

from extractor.atomic import atomic_h5
from extractor.augment import Views
from extractor.cache.layout import (
    FORMAT,
    CacheError,
    chunk_rows,
    create_dataset,
    feature_datasets,
    from_attr,
    label_dims,
    read_stats,
    set_attrs,
    strings,
    write_spec,
    write_stats,
    write_strings,
)
from extractor.cache.reader import lost_sources_message
from extractor.cache.reader import missing_sources as cache_missing_sources
from extractor.cache.writer import write_rows
from extractor.features import Features
from extractor.spec import FeatureSpec
from extractor.walk import UNKNOWN, FileStat

logger = logging.getLogger(__name__)

SHARD_FORMAT = "featcache-shard/1"


class ShardError(CacheError):
    """A shard is missing, unreadable, or made with other settings."""


def shards_dir(cache_path: Path) -> Path:
    """The default home of a cache's shards: `<cache>.shards/` beside it."""
    return cache_path.with_name(cache_path.name + ".shards")


def shard_name(paths: Sequence[str]) -> str:
    """A name fixed by the files a shard holds, so a retried task overwrites its own shard."""
    digest = hashlib.sha256("\n".join(paths).encode("utf-8")).hexdigest()[:20]
    return f"shard-{digest}.h5"


def write_shard(
    directory: Path,
    spec: FeatureSpec,
    paths: Sequence[str],
    sha256: Sequence[str],
    features: Features | NDArray[np.float32],
    skipped: Sequence[tuple[str, str]],
    file_stats: Sequence[FileStat] | None = None,
    views: Sequence[int] | None = None,
    augment: Views | None = None,
) -> Path:
    """Write one shard atomically (temporary name, then rename) and return its path.

    One row per (file, view): `paths`, `sha256`, `file_stats` and `views` (None: all 0) name
    each row; an image's views follow it, as in a cache."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / shard_name([*dict.fromkeys(paths), *(p for p, _ in skipped)])
    with atomic_h5(path) as f:
        write_spec(f.attrs, spec)
        for key, value in (augment or Views()).to_attrs().items():
            f.attrs[key] = value
        f.attrs["format"] = SHARD_FORMAT
        write_rows(f, spec, features, paths, sha256, skipped, file_stats)
        f.create_dataset("view", data=np.asarray(views if views is not None else
                                                 np.zeros(len(paths)), np.int16))
    return path


@dataclasses.dataclass
class Shard:
    path: Path
    paths: list[str]
    sha256: list[str]
    skipped: dict[str, str]
    mtime: float
    #: Each row's file size and mtime when read; None for shards made before they were kept.
    stats: list[FileStat] | None = None
    #: Each row's view: 0 for the image, 1..V for its augmented views.
    views: list[int] = dataclasses.field(default_factory=list)
    #: The file's mtime in ns (`mtime` is seconds): what change detection compares with
    #: (`extractor.planner.shard_records`).
    mtime_ns: int = 0


def read_shard(
    path: Path, spec: FeatureSpec | None = None, augment: Views | None = None
) -> Shard:
    """Open and check one shard: readable, a shard or cache, rows complete, same settings
    (`spec`, and `augment` when given: the same views)."""
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise ShardError(f"shard {path} is missing") from None
    except OSError as exc:
        raise ShardError(f"shard {path} is not a readable HDF5 file ({exc})") from None
    with f:
        attrs = {k: from_attr(v) for k, v in f.attrs.items()}
        if attrs.get("format") not in (SHARD_FORMAT, FORMAT):
            raise ShardError(f"{path} is not a shard (attribute format is {attrs.get('format')!r})")
        if f["features"].is_virtual:
            raise ShardError(f"{path} is itself a merged cache, not a shard")
        paths, sha = strings(f["paths"]), strings(f["sha256"])
        if f["features"].shape[0] != len(paths) or len(sha) != len(paths):
            raise ShardError(f"shard {path} is incomplete: {f['features'].shape[0]} feature rows "
                             f"for {len(paths)} paths")
        if spec is not None:
            theirs = FeatureSpec.from_dict(attrs)
            diffs = list(spec.file_differences(theirs))
            for dataset, _ in feature_datasets(spec).values():
                if dataset not in f or f[dataset].shape[0] != len(paths):
                    raise ShardError(f"shard {path} is incomplete: no {len(paths)} rows of "
                                     f"{dataset}")
            if augment is not None and Views.from_attrs(attrs) != augment:
                diffs.append("augmented views")
            if diffs:
                raise ShardError(f"shard {path} was made with other settings ({', '.join(diffs)});"
                                 " delete it or use another shards folder")
        skipped = dict(zip(strings(f["skipped/paths"]), strings(f["skipped/reasons"]),
                           strict=True))
        stats = read_stats(f, "", len(paths)) if "file_size" in f else None
        views = f["view"][:].tolist() if "view" in f else [0] * len(paths)
    st = path.stat()
    return Shard(path, paths, sha, skipped, st.st_mtime, stats, views, st.st_mtime_ns)


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete the temporaries of shard writes that never finished (a worker killed mid-write);
    only while no one writes shards here (the driver holds the cache's lock)."""
    stale = sorted(directory.glob(".shard-*.h5.tmp-*")) if directory.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def list_shards(directory: Path) -> list[Path]:
    """Complete shard files in `directory` (temporary files of unfinished writes excluded)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.h5") if not p.name.startswith("."))


def load_shards(
    directory: Path, spec: FeatureSpec | None, expected: Sequence[Path] = (),
    augment: Views | None = None,
) -> list[Shard]:
    """Every shard in `directory`, oldest first, checked; each of `expected` must be there.

    `expected` lists the shards this run's workers reported: one the driver cannot see (a
    worker wrote it to a disk of its own) is an error here rather than NaN rows later.
    """
    found = {p.resolve() for p in list_shards(directory)}
    missing = [p for p in expected if Path(p).resolve() not in found]
    if missing:
        raise ShardError(
            f"{len(missing)} shard(s) reported by the workers are not in {directory} as the "
            f"driver sees it (first: {missing[0]}). Shards must live on storage that every "
            "node and the driver can read (--shards-dir on a shared file system)"
        )
    shards = [read_shard(p, spec, augment) for p in list_shards(directory)]
    return sorted(shards, key=lambda s: (s.mtime, s.path.name))


@dataclasses.dataclass
class _Row:
    sha256: str
    shard: int
    index: int
    stat: FileStat = UNKNOWN
    view: int = 0


def merge(
    cache_path: Path,
    shards: Sequence[Shard],
    labels: Mapping[str, int],
    class_names: Sequence[str],
    spec: FeatureSpec,
    extra_attrs: Mapping[str, Any],
    verified: Mapping[str, FileStat] | None = None,
) -> tuple[int, list[tuple[str, str]]]:
    """Write `cache_path` as a virtual dataset over `shards`; return (rows, skipped files).

    Only paths in `labels` (the folder as scanned now) are kept, sorted as the local engine
    sorts them, each image's views after it. When shards disagree about a path, a row beats a
    skip and the newest shard wins (all of the path's rows come from that shard).
    The views' settings (`augment_*` attributes) belong in `extra_attrs`. `verified` gives fresh
    stats of files checked unchanged since their shard recorded them (recorded instead).
    """
    rows: dict[str, list[_Row]] = {}
    skipped: dict[str, str] = {}
    for k, shard in enumerate(shards):
        stats = shard.stats or [UNKNOWN] * len(shard.paths)
        views = shard.views or [0] * len(shard.paths)
        fresh: dict[str, list[_Row]] = {}
        for i, (p, s) in enumerate(zip(shard.paths, shard.sha256, strict=True)):
            fresh.setdefault(p, []).append(_Row(s, k, i, stats[i], views[i]))
        rows.update(fresh)
        skipped.update(shard.skipped)
    images = sorted(p for p in rows if p in labels)
    skip_keep = sorted(p for p in skipped if p in labels and p not in rows)
    keep = [(p, row) for p in images for row in sorted(rows[p], key=lambda r: r.view)]
    n = len(keep)
    base = cache_path.parent
    with atomic_h5(cache_path) as out:
        set_attrs(out, spec, class_names, extra_attrs)
        runs = _runs([row for _, row in keep])
        for dataset, shape in feature_datasets(spec).values():
            if not n:
                create_dataset(out, dataset, 0, shape)
                continue
            layout = h5py.VirtualLayout(shape=(n, *shape), dtype=np.float32)
            for dst, src, count, k in runs:
                shard = shards[k]
                source = h5py.VirtualSource(os.path.relpath(shard.path, base), dataset,
                                            shape=(len(shard.paths), *shape))
                layout[dst : dst + count] = source[src : src + count]
            parent, _, leaf = dataset.rpartition("/")
            group = out.require_group(parent) if parent else out
            # NaN, not 0: ReLU features are mostly zeros, so a zero fill would pass for data.
            group.create_virtual_dataset(leaf, layout, fillvalue=np.nan)
        out.create_dataset("labels", data=np.array([labels[p] for p, _ in keep], np.int32))
        write_strings(out, "paths", [p for p, _ in keep])
        write_strings(out, "sha256", [row.sha256 for _, row in keep])
        now = verified or {}
        write_stats(out, "", [now.get(p, row.stat) for p, row in keep])
        out.create_dataset("view", data=np.array([row.view for _, row in keep], np.int16))
        grp = out.create_group("skipped")
        write_strings(grp, "paths", skip_keep)
        write_strings(grp, "reasons", [skipped[p] for p in skip_keep])
        label_dims(out, spec)
    return len(images), [(p, skipped[p]) for p in skip_keep]


def _runs(rows: Sequence[_Row]) -> list[tuple[int, int, int, int]]:
    """(destination start, source start, length, shard) of each run of consecutive rows."""
    runs: list[tuple[int, int, int, int]] = []
    for dst, row in enumerate(rows):
        if runs:
            d0, s0, count, k = runs[-1]
            if k == row.shard and s0 + count == row.index:
                runs[-1] = (d0, s0, count + 1, k)
                continue
        runs.append((dst, row.index, 1, row.shard))
    return runs


def is_virtual(cache_path: Path) -> bool:
    with h5py.File(cache_path, "r") as f:
        return bool("features" in f and f["features"].is_virtual)


def missing_sources(cache_path: Path) -> list[Path]:
    """Shard files a merged cache maps rows onto that cannot be opened (empty: all there)."""
    with h5py.File(cache_path, "r") as f:
        return cache_missing_sources(f, cache_path)


def check_sources(cache_path: Path) -> None:
    """Raise `ShardError` when a merged cache's shards are not all readable."""
    missing = missing_sources(cache_path)
    if missing:
        raise ShardError(lost_sources_message(cache_path, missing))


def make_self_contained(cache_path: Path) -> None:
    """Replace a merged cache by a plain copy holding its features (then shards are not needed)."""
    check_sources(cache_path)
    with h5py.File(cache_path, "r") as src, atomic_h5(cache_path) as out:
        for key, value in src.attrs.items():
            out.attrs[key] = value
        spec = FeatureSpec.from_dict({k: from_attr(v) for k, v in src.attrs.items()})
        for dataset, shape in feature_datasets(spec).values():
            feats = src[dataset]
            n = feats.shape[0]
            dest = create_dataset(out, dataset, n, shape)
            step = max(1024, chunk_rows(shape))
            for start in range(0, n, step):
                dest[start : start + step] = feats[start : start + step]
        # Values, not HDF5 copies: a copy would keep dimension-scale references into `src`.
        for name in ("labels", "view", "file_size", "file_mtime_ns"):
            if name in src:
                out.create_dataset(name, data=src[name][:])
        for name in ("paths", "sha256", "skipped/paths", "skipped/reasons"):
            write_strings(out.require_group(name.rpartition("/")[0] or "/"),
                           name.rpartition("/")[2], strings(src[name]))
        label_dims(out, spec)


def remove_shards(directory: Path) -> None:
    if directory.is_dir():
        shutil.rmtree(directory)
