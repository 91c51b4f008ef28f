"""A cache that grows: feature rows in files that are never rewritten, joined by a small index.

A run that adds files writes their rows to one new *row file* in `<cache>.rows/` and then
replaces the cache file itself by a new *index*: per-row metadata (paths, sha256, labels,
views, file stats) as ordinary datasets, and `features` and every `pooled/...` dataset as HDF5
virtual datasets that map each live row onto its row file. Rows already in a row file stay
where they are, so a run costs what its new images cost plus the index (about 200 bytes a row).

    <cache>             the index (format featcache/1, attribute row_files), read as any cache
    <cache>.rows/rows-NNNNNN.h5
                        feature rows of one run (datasets as a cache's, plus paths, sha256,
                        view), written once, whole (temporary name, fsync, rename)

Guarantees, as for the self-contained cache:

- The index is replaced whole (`extractor.atomic`), after the row file it maps onto is
  durable, so a reader or a crash sees the previous index (whose row files are untouched) or
  the new one. Files in `<cache>.rows/` that the committed index does not name (left by a
  killed run) are deleted by the next run that commits, under the output's lock.
- Rows of deleted or changed files are left out of the index at once (never visible); their
  bytes stay in their row file (dead rows) until compaction. Automatic compaction: when dead
  rows pass DEAD_SHARE of the rows on disk, or the index would need more than MAX_MAPPINGS
  virtual mappings, the row files holding dead rows are rewritten (their live rows copied into
  the run's new row file) and deleted. `compact` rewrites everything into one self-contained
  cache file sorted by path, which is also what a run writes when no row can stay in place
  (the first extraction of a folder).
- Row order: rows of older row files first, each file's rows sorted by path (an image's views
  right after it); a run's new rows after them. Readers never depend on a global path order
  (`FeatureCache.image_ids` groups views by path whatever the order).
- A cache written before this layout (one self-contained file) is adopted by the first run
  that changes it: the file is hard-linked into `<cache>.rows/` as the first row file (copied
  once where hard links are not supported, with a message), so its rows are not rewritten.
  A merged cache of the Ray engine (rows in shard files) is copied once, as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from extractor.atomic import atomic_h5, fsync_dir
from extractor.cache import writer
from extractor.cache.layout import (
    CacheError,
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
from extractor.cache.reader import open_cache
from extractor.cache.staging import Staging
from extractor.cache.writer import Row
from extractor.spec import FeatureSpec
from extractor.walk import UNKNOWN, FileStat

logger = logging.getLogger(__name__)

ROWS_FORMAT = "featcache-rows/1"
#: Attribute of an index: the row files its virtual datasets map onto, relative to its folder.
ROW_FILES = "row_files"
#: Automatic compaction when dead rows pass this share of the rows stored on disk: disk use
#: stays within 1 / (1 - 0.25) = 1.33x the live rows, and each compaction copies at most 3 live
#: rows per dead row it reclaims.
DEAD_SHARE = 0.25
#: ... or when the index would map rows through more virtual mappings than this: HDF5 builds
#: and reads a virtual dataset in time growing with its mappings (measured: 100 mappings over
#: 100,000 rows read in 0.17 s, 10,000 in 3.2 s, 50,000 in 16 s).
MAX_MAPPINGS = 1000


def rows_dir(cache_path: Path) -> Path:
    """Where an appended-to cache keeps its row files: `<cache>.rows/` beside it."""
    return cache_path.with_name(cache_path.name + ".rows")


def row_files(f: h5py.File) -> list[str]:
    """The row files an index maps onto (empty: a self-contained or merged cache)."""
    return [str(v) for v in from_attr(f.attrs.get(ROW_FILES, []))]


def is_index(cache_path: Path) -> bool:
    """Whether `cache_path` is an index over row files (the cache of a run that appended)."""
    with h5py.File(cache_path, "r") as f:
        return bool(row_files(f))


@dataclasses.dataclass
class _Entry:
    """The latest word on one file among the sources: its rows, a duplicate, or a skip."""

    kind: str  # "row", "dup" or "skip"
    sha256: str = ""
    stat: FileStat = UNKNOWN
    reason: str = ""
    views: dict[int, Row] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Sources:
    """Open files holding feature rows, and what they say about each path."""

    files: list[h5py.File] = dataclasses.field(default_factory=list)
    #: Sources whose rows may stay where they are: source -> (row-file name in the rows
    #: folder, or None for a self-contained cache to adopt; rows stored in it).
    keepable: dict[int, tuple[str | None, int]] = dataclasses.field(default_factory=dict)
    entries: dict[str, _Entry] = dataclasses.field(default_factory=dict)
    by_sha: dict[tuple[str, int], Row] = dataclasses.field(default_factory=dict)
    labels: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    def open(self, path: Path) -> int:
        self.files.append(h5py.File(path, "r"))
        return len(self.files) - 1

    def add_rows(self, rows: Sequence[Row], stats: Sequence[FileStat]) -> None:
        fresh: dict[str, _Entry] = {}
        for row, st in zip(rows, stats, strict=True):
            fresh.setdefault(row.path, _Entry("row", row.sha256, st)).views[row.view] = row
            # Features are found by content, also those of a row a newer one replaces: after
            # `mv a b` and a new `a`, b's features are the old a's row (issue 11, item 6).
            self.by_sha.setdefault((row.sha256, row.view), row)
        self.entries.update(fresh)

    def close(self) -> None:
        for f in self.files:
            f.close()


def _views(f: h5py.File, n: int) -> list[int]:
    return np.asarray(f["view"][:], np.int16).tolist() if "view" in f else [0] * n


def _load_cache(cache_path: Path, srcs: _Sources) -> None:
    """The previous cache's rows: in its row files (an index), in itself (a self-contained
    cache, adopted), or in shards (a merged cache: its rows will be copied)."""
    index = srcs.open(cache_path)
    f = srcs.files[index]
    paths, shas = strings(f["paths"]), strings(f["sha256"])
    views, stats = _views(f, len(paths)), read_stats(f, "", len(paths))
    srcs.labels = dict(zip(paths, np.asarray(f["labels"][:]).tolist(), strict=True))
    srcs.skipped = dict(zip(strings(f["skipped/paths"]), strings(f["skipped/reasons"]),
                            strict=True))
    names = row_files(f)
    if names:
        base = cache_path.parent
        opened = [srcs.open(base / name) for name in names]
        for k, name in zip(opened, names, strict=True):
            srcs.keepable[k] = (Path(name).name, int(srcs.files[k]["features"].shape[0]))
        where = np.asarray(f["row_file"][:], np.int64).tolist()
        at = np.asarray(f["row_index"][:], np.int64).tolist()
        rows = [Row(p, s, v, opened[w], i)
                for p, s, v, w, i in zip(paths, shas, views, where, at, strict=True)]
    else:
        if not f["features"].is_virtual:
            srcs.keepable[index] = (None, len(paths))
        rows = [Row(p, s, v, index, i)
                for i, (p, s, v) in enumerate(zip(paths, shas, views, strict=True))]
    srcs.add_rows(rows, stats)


def _load_parts(staging: Staging, srcs: _Sources) -> None:
    for part in staging.parts():
        k = srcs.open(part)
        f = srcs.files[k]
        paths, shas = strings(f["paths"]), strings(f["sha256"])
        rows = [Row(p, s, v, k, i) for i, (p, s, v) in
                enumerate(zip(paths, shas, _views(f, len(paths)), strict=True))]
        srcs.add_rows(rows, read_stats(f, "", len(paths)))
        dups = strings(f["dup_paths"])
        for p, s, st in zip(dups, strings(f["dup_sha256"]), read_stats(f, "dup_", len(dups)),
                            strict=True):
            srcs.entries[p] = _Entry("dup", s, st)
        skips = strings(f["skip_paths"])
        for p, r, st in zip(skips, strings(f["skip_reasons"]),
                            read_stats(f, "skip_", len(skips)), strict=True):
            srcs.entries[p] = _Entry("skip", stat=st, reason=r)


@dataclasses.dataclass
class _Kept:
    path: str
    row: Row
    stat: FileStat
    label: int


def _select(
    srcs: _Sources, labels: Mapping[str, int], views: int, where: str,
    verified: Mapping[str, FileStat],
) -> tuple[list[_Kept], list[tuple[str, str]]]:
    """The rows (sorted by path, then view) and skips of every file in `labels`."""
    keep: list[_Kept] = []
    skip_keep: list[tuple[str, str]] = []
    for p in sorted(labels):
        entry = srcs.entries.get(p)
        if entry is None:
            continue
        if entry.kind == "skip":
            skip_keep.append((p, entry.reason))
            continue
        if entry.kind == "dup":
            for v in range(views + 1):
                if (entry.sha256, v) not in srcs.by_sha:
                    raise CacheError(f"checkpoint in {where} names a duplicate of {p} whose "
                                     f"features are missing; delete that directory and rerun")
                entry.views[v] = srcs.by_sha[(entry.sha256, v)]
        stat = verified.get(p, entry.stat)
        keep.extend(_Kept(p, entry.views[v], stat, labels[p]) for v in sorted(entry.views))
    return keep, skip_keep


def _in_place(srcs: _Sources, kept: _Kept) -> bool:
    """Whether a kept row can stay where it is: its own row (not another path's, as a
    duplicate's is) in a row file or an adoptable cache."""
    return kept.row.source in srcs.keepable and kept.row.path == kept.path


def _mappings(order: Sequence[Row]) -> int:
    runs, last = 0, None
    for row in order:
        if last is None or row.source != last.source or row.index != last.index + 1:
            runs += 1
        last = row
    return runs


@dataclasses.dataclass
class Layout:
    """How a run lays the rows out: which stay in place and which are written anew."""

    stay: list[_Kept]
    copy: list[_Kept]
    #: Rows on disk before the run that no file in the folder uses any more.
    dead: int
    compacted: list[str] = dataclasses.field(default_factory=list)


def plan_layout(
    srcs: _Sources, keep: list[_Kept], *, dead_share: float = DEAD_SHARE,
    max_mappings: int = MAX_MAPPINGS, compact: bool = False,
) -> Layout:
    """Keep rows in place where they are, unless compaction (asked, or automatic past
    `dead_share` dead rows or `max_mappings`) rewrites their files."""
    if compact:
        return Layout([], keep, 0, [name or "cache" for name, _ in srcs.keepable.values()])
    stay = [k for k in keep if _in_place(srcs, k)]
    live: dict[int, int] = {}
    for k in stay:
        live[k.row.source] = live.get(k.row.source, 0) + 1
    stored = sum(n for _, n in srcs.keepable.values())
    dead_in = {s: n - live.get(s, 0) for s, (_, n) in srcs.keepable.items()}
    dead = sum(dead_in.values())
    on_disk = stored + len(keep) - len(stay)
    order = sorted(stay, key=lambda k: (k.row.source, k.row.index))
    rewrite = {s for s, n in dead_in.items() if n > 0}
    if rewrite and (dead / on_disk > dead_share
                    or _mappings([k.row for k in order]) + 1 > max_mappings):
        logger.info("compacting: %d of %d rows on disk are dead; rewriting the %d row files "
                    "that hold them", dead, on_disk, len(rewrite))
        names = [srcs.keepable[s][0] or "cache" for s in sorted(rewrite)]
        stay = [k for k in stay if k.row.source not in rewrite]
        staying = {id(k) for k in stay}
        return Layout(stay, [k for k in keep if id(k) not in staying],
                      dead - sum(dead_in[s] for s in rewrite), names)
    return Layout(stay, [k for k in keep if not _in_place(srcs, k)], dead)


def _copy_into(
    out: h5py.Group, spec: FeatureSpec, rows: Sequence[Row], srcs: _Sources
) -> None:
    n = len(rows)
    for dataset, shape in feature_datasets(spec).values():
        dest = create_dataset(out, dataset, n, shape)
        if n:
            # Through the module: tests stop a run half-way by replacing writer.copy_rows.
            writer.copy_rows(dest, list(rows), srcs.files, dataset)


def _write_metadata(out: h5py.File, kept: Sequence[_Kept], skip_keep: Sequence[tuple[str, str]]
                    ) -> None:
    out.create_dataset("labels", data=np.array([k.label for k in kept], np.int32))
    write_strings(out, "paths", [k.path for k in kept])
    write_strings(out, "sha256", [k.row.sha256 for k in kept])
    out.create_dataset("view", data=np.array([k.row.view for k in kept], np.int16))
    write_stats(out, "", [k.stat for k in kept])
    grp = out.create_group("skipped")
    write_strings(grp, "paths", [p for p, _ in skip_keep])
    write_strings(grp, "reasons", [r for _, r in skip_keep])


def _next_name(directory: Path) -> str:
    seqs = [int(p.stem.split("-")[1]) for p in directory.glob("rows-*.h5")
            if p.stem.split("-")[1].isdigit()]
    return f"rows-{max(seqs, default=-1) + 1:06d}.h5"


def _adopt(cache_path: Path, directory: Path) -> str:
    """Make a self-contained cache's file the first row file, without rewriting it."""
    name = _next_name(directory)
    target = directory / name
    try:
        os.link(cache_path, target)
    except OSError as exc:
        logger.warning("upgrading %s to the append layout: hard links are not supported here "
                       "(%s), so its rows are copied once to %s", cache_path, exc, target)
        tmp = directory / f".{name}.tmp-{os.getpid()}"
        shutil.copyfile(cache_path, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    else:
        logger.warning("upgrading %s to the append layout, once: its rows stay where they are "
                       "(now also %s); new rows go to row files beside it", cache_path, target)
    fsync_dir(directory)
    return name


def write(
    cache_path: Path, spec: FeatureSpec, attrs: Mapping[str, Any], srcs: _Sources,
    layout: Layout, skip_keep: Sequence[tuple[str, str]],
) -> None:
    """Write the new row file (if any rows are new) and the index, or a self-contained cache
    when no row stays in place; then delete row files the new cache does not use."""
    class_names = list(attrs.get("class_names", []))
    extra = {k: v for k, v in attrs.items() if k not in ("class_names", ROW_FILES)}
    directory = rows_dir(cache_path)
    if not layout.stay:
        kept = sorted(layout.copy, key=lambda k: (k.path, k.row.view))
        with atomic_h5(cache_path) as out:
            set_attrs(out, spec, class_names, extra)
            _copy_into(out, spec, [k.row for k in kept], srcs)
            _write_metadata(out, kept, skip_keep)
            label_dims(out, spec)
        remove_unused(cache_path, [])
        return

    directory.mkdir(exist_ok=True)
    names: dict[int, str] = {}
    for src, (name, _) in srcs.keepable.items():
        if any(k.row.source == src for k in layout.stay):
            names[src] = name if name is not None else _adopt(cache_path, directory)
    rank = {src: r for r, src in enumerate(names)}
    stay = sorted(layout.stay, key=lambda k: (rank[k.row.source], k.row.index))
    new = sorted(layout.copy, key=lambda k: (k.path, k.row.view))
    files = list(names.values())
    where: list[tuple[int, int]] = [(rank[k.row.source], k.row.index) for k in stay]
    if new:
        name = _next_name(directory)
        with atomic_h5(directory / name) as out:
            write_spec(out.attrs, spec)
            out.attrs["format"] = ROWS_FORMAT
            _copy_into(out, spec, [k.row for k in new], srcs)
            write_strings(out, "paths", [k.path for k in new])
            write_strings(out, "sha256", [k.row.sha256 for k in new])
            out.create_dataset("view", data=np.array([k.row.view for k in new], np.int16))
        files.append(name)
        where.extend((len(files) - 1, i) for i in range(len(new)))
    kept = stay + new
    sizes = [_rows_in(directory / name) for name in files]
    with atomic_h5(cache_path) as out:
        set_attrs(out, spec, class_names, extra)
        out.attrs[ROW_FILES] = np.array([f"{directory.name}/{n}" for n in files],
                                        dtype=h5py.string_dtype("utf-8"))
        _map_rows(out, spec, directory.name, files, sizes, where)
        _write_metadata(out, kept, skip_keep)
        out.create_dataset("row_file", data=np.array([w for w, _ in where], np.int32))
        out.create_dataset("row_index", data=np.array([i for _, i in where], np.int64))
        label_dims(out, spec)
        for name in ("row_file", "row_index"):
            out[name].dims[0].attach_scale(out["row"])
            out[name].dims[0].label = "row"
    remove_unused(cache_path, files)


def _rows_in(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return int(f["features"].shape[0])


def _map_rows(
    out: h5py.File, spec: FeatureSpec, folder: str, files: Sequence[str], sizes: Sequence[int],
    where: Sequence[tuple[int, int]],
) -> None:
    """`features` and `pooled/...` as virtual datasets: row k -> row where[k] of its file."""
    runs: list[tuple[int, int, int, int]] = []  # (destination, file, source start, count)
    for dst, (w, i) in enumerate(where):
        if runs and runs[-1][1] == w and runs[-1][2] + runs[-1][3] == i:
            d0, _, s0, count = runs[-1]
            runs[-1] = (d0, w, s0, count + 1)
        else:
            runs.append((dst, w, i, 1))
    for dataset, shape in feature_datasets(spec).values():
        layout = h5py.VirtualLayout(shape=(len(where), *shape), dtype=np.float32)
        sources = [h5py.VirtualSource(f"{folder}/{name}", dataset, shape=(n, *shape))
                   for name, n in zip(files, sizes, strict=True)]
        for dst, w, src, count in runs:
            layout[dst : dst + count] = sources[w][src : src + count]
        parent, _, leaf = dataset.rpartition("/")
        group = out.require_group(parent) if parent else out
        # NaN, not 0: ReLU features are mostly zeros, so a zero fill would pass for data.
        group.create_virtual_dataset(leaf, layout, fillvalue=np.nan)


def remove_unused(cache_path: Path, keep: Sequence[str]) -> None:
    """Delete what `<cache>.rows/` holds beyond `keep` (the committed index's row files): dead
    files, and leftovers of killed runs. Only under the output's lock."""
    directory = rows_dir(cache_path)
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.name not in keep:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
    if not keep:
        with contextlib.suppress(OSError):
            directory.rmdir()
    fsync_dir(directory.parent if str(directory.parent) else ".")


def consolidate(
    cache_path: Path,
    staging: Staging,
    labels: Mapping[str, int],
    class_names: Sequence[str],
    extra_attrs: Mapping[str, Any],
    verified: Mapping[str, FileStat] | None = None,
    *,
    dead_share: float = DEAD_SHARE,
) -> tuple[int, list[tuple[str, str]]]:
    """Fold the checkpoints into the cache: new rows to a new row file, then a new index.

    `labels` maps every path that belongs in the cache (the folder as scanned now) to its label;
    rows for files no longer in the folder leave the index. For each file the latest source
    wins (the cache, then the checkpoints in order), whether it gives rows, a duplicate or a
    skip. `verified` gives fresh stats of files checked unchanged since they were recorded.
    Returns (images, skipped files); with augmented views an image has several rows.
    """
    srcs = _Sources()
    try:
        if cache_path.exists():
            _load_cache(cache_path, srcs)
        _load_parts(staging, srcs)
        keep, skip_keep = _select(srcs, labels, staging.augment.count, str(staging.dir),
                                  verified or {})
        dropped = sum(1 for p, e in srcs.entries.items() if e.kind != "skip" and p not in labels)
        if dropped:
            logger.info("dropping the rows of %d files that are gone from the folder", dropped)
        layout = plan_layout(srcs, keep, dead_share=dead_share)
        attrs = {**extra_attrs, **staging.augment.to_attrs(), "class_names": list(class_names)}
        write(cache_path, staging.spec, attrs, srcs, layout, skip_keep)
    finally:
        srcs.close()
    staging.clear()
    return len({k.path for k in keep}), skip_keep


@dataclasses.dataclass
class CompactSummary:
    cache: Path
    rows: int
    dead_rows: int  # rows on disk no file used any more, reclaimed
    bytes_before: int
    bytes_after: int


def disk_bytes(cache_path: Path) -> int:
    """Bytes the cache takes on disk: its file and its row files (each inode once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    directory = rows_dir(cache_path)
    for p in [cache_path, *(sorted(directory.iterdir()) if directory.is_dir() else [])]:
        st = p.stat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def compact(cache_path: Path) -> CompactSummary:
    """Rewrite a cache as one self-contained file, rows sorted by path, reclaiming the space
    of dead rows. The caller holds the output's lock (`extractor.planner.lock_output`)."""
    if not cache_path.exists():
        raise CacheError(f"no such cache file: {cache_path}")
    with open_cache(cache_path):  # refuses what is no cache, or lost row files
        pass
    before = disk_bytes(cache_path)
    srcs = _Sources()
    try:
        _load_cache(cache_path, srcs)
        index = srcs.files[0]
        attrs = {k: from_attr(v) for k, v in index.attrs.items()}
        spec = FeatureSpec.from_dict(attrs)
        views = int(attrs.get("augment_views", 0))
        keep, _ = _select(srcs, srcs.labels, views, str(cache_path), {})
        stored = sum(n for _, n in srcs.keepable.values())
        layout = plan_layout(srcs, keep, compact=True)
        skip_keep = sorted(srcs.skipped.items())
        for key in ("format", "package_version", "created", *spec.to_dict()):
            attrs.pop(key, None)
        write(cache_path, spec, attrs, srcs, layout, skip_keep)
    finally:
        srcs.close()
    return CompactSummary(cache_path, len(keep), max(0, stored - len(keep)), before,
                          disk_bytes(cache_path))
