"""The HDF5 feature cache: its layout, the crash-safe writer and the chunked reader.

Layout (readable with plain h5py or any HDF5 tool; see docs/CACHE.md):

    /features         (N, H, W, C) float32, chunked (~1 MiB), gzip level 1: the main layer's maps
    /pooled/<layer>/avg, /pooled/<layer>/max
                      (N, C) float32, gzip 1 + shuffle: pooled vectors of each pooled layer
    /labels           (N,) int32, index into attribute class_names, -1 when unlabelled
    /paths            (N,) UTF-8 strings, relative to the extracted folder, sorted
    /sha256           (N,) hex SHA-256 of each file's bytes
    /view             (N,) int16: 0 for the image itself, 1..K for its augmented views
    /file_size, /file_mtime_ns  (N,) int64: the file as read, to notice changes (-1: unknown)
    /skipped/paths    (M,) files that could not be used ...
    /skipped/reasons  (M,) ... and why
    /row, /height, /width, /channel, /<layer>_channel, /skipped/skipped_row
                      dimension scales naming the datasets' dimensions (no data)
    attributes        format, class_names, the feature spec (backbone, weights_sha256, layer,
                      input_size, preprocessing, feature_shape, runtime, pooled_layers,
                      precision, quantized_sha256), augment_views, augment_seed, augment_mode,
                      augmentation, weights_source, package_version, keras_version, created,
                      source_dir (engine = ray in merged caches)

Crash safety: the cache file is only ever replaced whole (`os.replace` of a finished temporary
file), so it is always either the previous complete cache or the new one. Work in progress goes
to checkpoint files in `<cache>.parts/`, each also written to a temporary name and renamed when
complete (`extractor.atomic`: a failed write leaves no temporary behind, and the rename is made
durable before the checkpoints it replaces are deleted). A killed run leaves complete
checkpoints only; the next run skips what they hold and folds them into the cache when it
finishes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from numpy.typing import NDArray

from extractor import features as named
from extractor.atomic import atomic_h5
from extractor.augment import mode_of
from extractor.features import Features
from extractor.features import pool as pool_maps
from extractor.spec import FeatureSpec, parse_feature_name
from extractor.walk import UNKNOWN, FileStat

logger = logging.getLogger(__name__)

FORMAT = "featcache/1"
PART_FORMAT = "featcache-part/1"
#: gzip is the one compression filter every HDF5 build has (lzf is h5py-only). Level 1 without
#: the shuffle filter measured best on real features (93% zeros after ReLU and max-pooling):
#: 8.3x smaller, and faster to write and read than higher levels or shuffle. README, "Cache size".
COMPRESSION = "gzip"
COMPRESSION_LEVEL = 1
#: Pooled vectors are dense (an average is rarely 0): POOLED_FILTERS measured best on them
#: (README, "Cache size").
POOLED_COMPRESSION = "gzip"
POOLED_COMPRESSION_LEVEL = 1
POOLED_SHUFFLE = True
CHUNK_BYTES = 1 << 20
_STR = h5py.string_dtype("utf-8")


class CacheError(RuntimeError):
    """A cache file is missing, unreadable, or not a feature cache."""


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
    """How many augmented views each image has in a cache, and how they were drawn."""

    views: int = 0
    seed: int = 0
    description: str = ""
    #: `recipe`, `dihedral` or `flips` (`extractor.augment`); `none` without views.
    mode: str = "none"

    def to_attrs(self) -> dict[str, Any]:
        return {"augment_views": self.views, "augment_seed": self.seed,
                "augmentation": self.description, "augment_mode": self.mode}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> AugmentSettings:
        views = int(attrs.get("augment_views", 0))
        description = str(attrs.get("augmentation", ""))
        mode = str(attrs.get("augment_mode", "")) or (
            mode_of(description) if views else "none")  # caches before augment_mode
        return cls(views, int(attrs.get("augment_seed", 0)), description, mode)


def parts_dir(cache_path: Path) -> Path:
    """Where a run's checkpoints live until they are folded into the cache."""
    return cache_path.with_name(cache_path.name + ".parts")


def _package_version() -> str:
    from extractor import __version__

    return __version__


# --------------------------------------------------------------------------- reading


class FeatureCache:
    """Read access to a cache file. Features stay on disk until asked for.

    A merged cache (Ray engine) whose shard files are not all readable is refused on open:
    HDF5 would read the lost rows as NaN without an error. `check_sources=False` skips that
    check, only to read the attributes of a cache that is about to be rebuilt.
    """

    def __init__(self, path: str | os.PathLike[str], *, check_sources: bool = True) -> None:
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise CacheError(f"no such cache file: {self.path}") from None
        except OSError as exc:
            raise CacheError(f"{self.path} is not a readable HDF5 file ({exc})") from None
        if self._file.attrs.get("format") != FORMAT:
            self._file.close()
            raise CacheError(f"{self.path} is not a feature cache (attribute format != {FORMAT})")
        if check_sources:
            missing = missing_sources(self._file, self.path)
            if missing:
                self._file.close()
                raise CacheError(lost_sources_message(self.path, missing))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._file["features"].shape[0])

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: _from_attr(v) for k, v in self._file.attrs.items()}

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.attrs)

    @property
    def class_names(self) -> list[str]:
        return list(self.attrs.get("class_names", []))

    @property
    def features(self) -> h5py.Dataset:
        """The on-disk dataset; slice it (`cache.features[i:j]`) to read rows."""
        return self._file["features"]

    @property
    def labels(self) -> NDArray[np.int32]:
        return np.asarray(self._file["labels"][:], dtype=np.int32)

    @property
    def paths(self) -> list[str]:
        return [p.decode("utf-8") for p in self._file["paths"][:]]

    @property
    def sha256(self) -> list[str]:
        return [s.decode("ascii") for s in self._file["sha256"][:]]

    @property
    def views(self) -> NDArray[np.int16]:
        """0 for each image itself, 1..K for its augmented views (all 0 without --augment)."""
        if "view" not in self._file:
            return np.zeros(len(self), dtype=np.int16)
        return np.asarray(self._file["view"][:], dtype=np.int16)

    @property
    def file_stats(self) -> list[FileStat] | None:
        """Size and mtime (ns) of each row's file when it was read; None in caches made before
        they were recorded. mtime -1: unknown (modified just before it was read)."""
        if "file_size" not in self._file:
            return None
        return _read_stats(self._file, "", len(self))

    @property
    def image_ids(self) -> NDArray[np.int64]:
        """One integer per row, the same for every view of one image (file path) and increasing
        with the path: group rows by image with it (e.g. scikit-learn's GroupKFold)."""
        paths = np.asarray(self._file["paths"][:], dtype=object)
        if len(paths) == 0:
            return np.zeros(0, np.int64)
        return np.unique(paths, return_inverse=True)[1].astype(np.int64).reshape(-1)

    @property
    def n_images(self) -> int:
        """Images in the cache (rows less augmented views)."""
        return int((self.views == 0).sum())

    @property
    def augmentation(self) -> AugmentSettings:
        return AugmentSettings.from_attrs(self.attrs)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        grp = self._file["skipped"]
        return [
            (p.decode("utf-8"), r.decode("utf-8"))
            for p, r in zip(grp["paths"][:], grp["reasons"][:], strict=True)
        ]

    @property
    def feature_names(self) -> list[str]:
        """Every named feature (`extractor.features`) this cache can give (`iter_named`)."""
        return self.spec.available_names()

    def _named_source(self, name: str) -> tuple[h5py.Dataset, str | None]:
        """The dataset a named feature is read from, and the pooling to apply to it (if any)."""
        spec = self.spec
        if name == spec.layer:
            return self.features, None
        stored = self._file.get(f"pooled/{name}")
        if isinstance(stored, h5py.Dataset):  # (pooled/<layer> alone is a group)
            return stored, None
        layer, how = parse_feature_name(name)
        if layer == spec.layer and how is not None:
            return self.features, how  # a cache without stored pooled vectors: pool the maps
        raise CacheError(
            f"{self.path} holds no feature {name!r} (it has: {', '.join(self.feature_names)}); "
            f"extract it again with the layers needed"
        )

    def iter_named(
        self, names: Sequence[str], batch_size: int = 1024,
        indices: Sequence[int] | NDArray[np.integer] | None = None,
    ) -> Iterator[tuple[dict[str, NDArray[np.float32]], NDArray[np.int32]]]:
        """Yield ({name: rows}, labels) for the named features, `batch_size` rows at a time."""
        sources = {name: self._named_source(name) for name in names}
        labels = self.labels
        idx = (np.arange(len(labels), dtype=np.int64) if indices is None
               else np.asarray(indices, dtype=np.int64))
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            order = np.argsort(chunk, kind="stable")
            out: dict[str, NDArray[np.float32]] = {}
            for name, (dataset, how) in sources.items():
                rows = _read_rows(dataset, chunk[order])
                if how is not None:
                    rows = pool_maps(rows, how)
                arranged = np.empty_like(rows)
                arranged[order] = rows
                out[name] = arranged
            yield out, labels[chunk]

    def read_named(
        self, names: Sequence[str], indices: Sequence[int] | NDArray[np.integer] | None = None
    ) -> dict[str, NDArray[np.float32]]:
        """The named features of all (or the given) rows, in memory."""
        parts = [batch for batch, _ in self.iter_named(names, 4096, indices)]
        if parts:
            return {name: np.concatenate([p[name] for p in parts]) for name in names}
        shapes = {name: self._named_source(name) for name in names}
        return {name: np.zeros((0, *(ds.shape[1:] if how is None else ds.shape[-1:])),
                               np.float32) for name, (ds, how) in shapes.items()}

    def iter_batches(
        self, batch_size: int = 1024, indices: Sequence[int] | NDArray[np.integer] | None = None
    ) -> Iterator[tuple[NDArray[np.float32], NDArray[np.int32]]]:
        """Yield (features, labels) in order, `batch_size` rows at a time, never the whole cache."""
        labels = self.labels
        feats = self.features
        if indices is None:
            for start in range(0, len(labels), batch_size):
                stop = start + batch_size
                yield np.asarray(feats[start:stop], dtype=np.float32), labels[start:stop]
            return
        idx = np.asarray(indices, dtype=np.int64)
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            order = np.argsort(chunk, kind="stable")
            rows = _read_rows(feats, chunk[order])
            out = np.empty_like(rows)
            out[order] = rows
            yield out, labels[chunk]

    def read(
        self, indices: Sequence[int] | NDArray[np.integer] | None = None
    ) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
        """All (or the given) rows in memory at once: for sets that fit."""
        batches = list(self.iter_batches(4096, indices))
        if not batches:
            shape = tuple(self.features.shape[1:])
            return np.zeros((0, *shape), np.float32), np.zeros((0,), np.int32)
        return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def open_cache(path: str | os.PathLike[str], *, check_sources: bool = True) -> FeatureCache:
    """Open a feature cache for reading (use as a context manager)."""
    return FeatureCache(path, check_sources=check_sources)


def virtual_source_files(f: h5py.File) -> list[str]:
    """The files the virtual datasets of `f` map rows onto, as stored (relative names)."""
    names: set[str] = set()

    def visit(_: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and obj.is_virtual:
            names.update(m.file_name for m in obj.virtual_sources())

    f.visititems(visit)
    return sorted(n for n in names if n != ".")


def missing_sources(f: h5py.File, path: Path) -> list[Path]:
    """Source files of `f`'s virtual datasets that cannot be opened (empty: all there)."""
    missing = []
    for name in virtual_source_files(f):
        source = path.parent / name
        try:
            with h5py.File(source, "r") as src:
                src["features"]  # opening the dataset is the check
        except (OSError, KeyError):
            missing.append(source)
    return missing


def lost_sources_message(path: Path, missing: Sequence[Path]) -> str:
    if path.with_name(path.name + ".rows") in {m.parent for m in missing}:
        return (
            f"{path} keeps its rows in row files in {path.name}.rows/, and {len(missing)} of "
            f"them cannot be read (first: {missing[0]}); its features would read back as NaN. "
            f"Keep the cache next to its {path.name}.rows folder (or delete the cache to "
            "rebuild it)"
        )
    return (
        f"{path} is a merged cache whose rows live in shard files, and {len(missing)} of them "
        f"cannot be read (first: {missing[0]}); its features would read back as NaN. Keep the "
        "cache next to its shards folder, or run extract --engine ray again to re-extract the "
        "files they held (or delete the cache to rebuild it)"
    )


def _from_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_from_attr(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_rows(dataset: h5py.Dataset, sorted_idx: NDArray[np.int64]) -> NDArray[np.float32]:
    """Rows at increasing (possibly repeated) indices, read as few contiguous slices."""
    if len(sorted_idx) == 0:
        return np.zeros((0, *dataset.shape[1:]), dtype=np.float32)
    lo, hi = int(sorted_idx[0]), int(sorted_idx[-1]) + 1
    if hi - lo <= 4 * len(sorted_idx):
        return np.asarray(dataset[lo:hi], dtype=np.float32)[sorted_idx - lo]
    unique, inverse = np.unique(sorted_idx, return_inverse=True)
    return np.asarray(dataset[unique], dtype=np.float32)[inverse]


# --------------------------------------------------------------------------- writing


def _chunk_rows(feature_shape: Sequence[int]) -> int:
    row_bytes = 4 * int(np.prod(feature_shape))
    return max(1, CHUNK_BYTES // row_bytes)


def dataset_name(spec: FeatureSpec, name: str) -> str:
    """Where a named feature lives in a cache (or checkpoint, or shard): the main layer's maps
    in `features`, pooled vectors in `pooled/<layer>/<avg|max>`."""
    return "features" if name == spec.layer else f"pooled/{name}"


def feature_datasets(spec: FeatureSpec) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every feature a file made with `spec` stores: name -> (dataset, shape of one row)."""
    return {name: (dataset_name(spec, name), shape)
            for name, shape in named.shapes(spec).items()}


def _create_dataset(f: h5py.Group, path: str, n: int, row_shape: Sequence[int]) -> h5py.Dataset:
    pooled = path != "features"
    return f.create_dataset(
        path,
        shape=(n, *row_shape),
        dtype=np.float32,
        chunks=(max(1, min(n, _chunk_rows(row_shape))), *row_shape) if n else None,
        compression=(POOLED_COMPRESSION if pooled else COMPRESSION) if n else None,
        compression_opts=(POOLED_COMPRESSION_LEVEL if pooled else COMPRESSION_LEVEL) if n
        else None,
        shuffle=bool(n and pooled and POOLED_SHUFFLE),
    )


def as_features(
    features: Features | NDArray[np.float32], spec: FeatureSpec, n: int
) -> Features:
    """Named features of `n` rows for `spec`: a dict as the conv base gives it, or an array
    taken as the main maps (older callers); the main layer's poolings are derived from the
    maps when missing. Raises ValueError when a feature is missing or has the wrong shape."""
    given: Mapping[str, NDArray[np.float32]] = (
        features if isinstance(features, Mapping) else {spec.layer: features})
    try:
        out = named.select(given, spec.stored_names(), spec.layer)
    except KeyError as exc:
        raise ValueError(f"features for {spec.stored_names()} are needed; {exc.args[0]}") from None
    for name, shape in named.shapes(spec).items():
        arr = np.asarray(out[name], dtype=np.float32)
        if arr.shape != (n, *shape):
            raise ValueError(f"feature {name!r} must have shape {(n, *shape)}; got {arr.shape}")
        out[name] = arr
    return out


def _write_strings(group: h5py.Group, name: str, values: Sequence[str]) -> None:
    group.create_dataset(name, data=np.array(list(values), dtype=object), dtype=_STR)


def _write_stats(group: h5py.Group, prefix: str, stats: Sequence[FileStat]) -> None:
    """`<prefix>file_size` and `<prefix>file_mtime_ns`, (N,) int64: see `extractor.walk`."""
    arr = np.array([tuple(st) for st in stats], dtype=np.int64).reshape(len(stats), 2)
    group.create_dataset(f"{prefix}file_size", data=arr[:, 0])
    group.create_dataset(f"{prefix}file_mtime_ns", data=arr[:, 1])


def _read_stats(group: h5py.Group, prefix: str, n: int) -> list[FileStat]:
    """Recorded file stats, or unknown ones for files written before they were recorded."""
    if f"{prefix}file_size" not in group:
        return [UNKNOWN] * n
    sizes = group[f"{prefix}file_size"][:].tolist()
    mtimes = group[f"{prefix}file_mtime_ns"][:].tolist()
    return list(map(FileStat._make, zip(sizes, mtimes, strict=True)))


#: netCDF-4's mark of a dimension scale that holds no coordinate values: xarray (h5netcdf) and
#: other netCDF readers then show the dimension's name without a variable of that name.
_NOT_A_VARIABLE = "This is a netCDF dimension but not a netCDF variable."


def _dimension(group: h5py.Group, name: str, size: int) -> h5py.Dataset:
    # No data is written, so no storage is allocated: a name and a length only.
    ds = group.create_dataset(name, shape=(size,), dtype=np.float32)
    ds.make_scale(f"{_NOT_A_VARIABLE}{size:10d}")
    return ds


def _attach(ds: h5py.Dataset, dims: Sequence[h5py.Dataset], names: Sequence[str]) -> None:
    for axis, (scale, name) in enumerate(zip(dims, names, strict=True)):
        ds.dims[axis].attach_scale(scale)
        ds.dims[axis].label = name


def label_dims(f: h5py.File, spec: FeatureSpec) -> None:
    """Name every dataset's dimensions (HDF5 dimension scales, as netCDF-4 writes them):
    `row` for the cache's rows, `height`, `width`, `channel` for the maps,
    `<layer>_channel` for pooled vectors, `skipped_row` in /skipped. Works on virtual datasets
    too: the names live in the cache file, not in the shards."""
    n = int(f["features"].shape[0])
    row = _dimension(f, "row", n)
    h, w, c = (int(v) for v in f["features"].shape[1:])
    maps = [row, _dimension(f, "height", h), _dimension(f, "width", w),
            _dimension(f, "channel", c)]
    _attach(f["features"], maps, ["row", "height", "width", "channel"])
    for layer in spec.pooled_layers:
        channels = int(f[f"pooled/{layer}/avg"].shape[1])
        dim = _dimension(f, f"{layer}_channel", channels)
        for how in ("avg", "max"):
            _attach(f[f"pooled/{layer}/{how}"], [row, dim], ["row", f"{layer}_channel"])
    for name in ("labels", "paths", "sha256", "view", "file_size", "file_mtime_ns"):
        if name in f:
            _attach(f[name], [row], ["row"])
    grp = f["skipped"]
    skipped_row = _dimension(grp, "skipped_row", int(grp["paths"].shape[0]))
    for name in ("paths", "reasons"):
        _attach(grp[name], [skipped_row], ["skipped_row"])


def write_spec(attrs: h5py.AttributeManager, spec: FeatureSpec) -> None:
    """The spec's fields as attributes (lists of names as string arrays, even when empty)."""
    for key, value in spec.to_dict().items():
        attrs[key] = np.array(value, dtype=_STR) if key == "pooled_layers" else value


def _set_attrs(
    f: h5py.File, spec: FeatureSpec, class_names: Sequence[str], extra: Mapping[str, Any]
) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["class_names"] = np.array(list(class_names), dtype=object) if class_names else (
        np.zeros((0,), dtype=_STR)
    )
    write_spec(f.attrs, spec)
    f.attrs["package_version"] = _package_version()
    f.attrs["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    for key, value in extra.items():
        f.attrs[key] = value


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
        _set_attrs(f, spec, class_names, extra_attrs or {})
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
        ds = _create_dataset(f, path, n, shape)
        if n:
            ds[:] = feats[name]
    _write_strings(f, "paths", paths)
    _write_strings(f, "sha256", sha256)
    _write_stats(f, "", file_stats if file_stats is not None else [UNKNOWN] * n)
    grp = f.create_group("skipped")
    _write_strings(grp, "paths", [p for p, _ in skipped])
    _write_strings(grp, "reasons", [r for _, r in skipped])


@dataclasses.dataclass
class Checkpoint:
    """What a run produced since its last checkpoint."""

    #: One entry per row: an image (view 0) or one of its augmented views (1..K).
    paths: list[str] = dataclasses.field(default_factory=list)
    sha256: list[str] = dataclasses.field(default_factory=list)
    views: list[int] = dataclasses.field(default_factory=list)
    #: Named features of each row (`extractor.features`).
    features: list[Features] = dataclasses.field(default_factory=list)
    #: The file's size and mtime when it was read (per row, like paths).
    stats: list[FileStat] = dataclasses.field(default_factory=list)
    #: Files whose bytes equal a file already extracted: they share its features (every view).
    dup_paths: list[str] = dataclasses.field(default_factory=list)
    dup_sha256: list[str] = dataclasses.field(default_factory=list)
    dup_stats: list[FileStat] = dataclasses.field(default_factory=list)
    skip_paths: list[str] = dataclasses.field(default_factory=list)
    skip_reasons: list[str] = dataclasses.field(default_factory=list)
    skip_stats: list[FileStat] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths) + len(self.dup_paths) + len(self.skip_paths)


@dataclasses.dataclass(frozen=True)
class Staged:
    """The latest a run's checkpoints say about one file."""

    kind: str  # "row" (extracted), "dup" (shares a row's features) or "skip" (unusable)
    sha256: str  # empty for skips
    stat: FileStat


class Staging:
    """The `<cache>.parts/` directory of a run in progress: append-only, complete files only."""

    def __init__(
        self, cache_path: Path, spec: FeatureSpec, augment: AugmentSettings | None = None
    ) -> None:
        self.dir = parts_dir(cache_path)
        self.spec = spec
        self.augment = augment or AugmentSettings()

    def parts(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(self.dir.glob("part-*.h5"))

    def check(self) -> None:
        """Refuse checkpoints left by a run with other settings (never mix features)."""
        for part in self.parts():
            with h5py.File(part, "r") as f:
                attrs = {k: _from_attr(v) for k, v in f.attrs.items()}
            theirs = FeatureSpec.from_dict(attrs)
            diffs = list(self.spec.file_differences(theirs))
            if AugmentSettings.from_attrs(attrs) != self.augment:
                diffs.append("augmentation")
            if diffs:
                fields = ", ".join(diffs)
                raise CacheError(
                    f"{self.dir} holds an unfinished extraction made with other settings "
                    f"({fields}); rerun with the same settings to finish it, or delete that "
                    f"directory to discard it"
                )

    def contents(self) -> tuple[dict[str, Staged], set[str]]:
        """What the checkpoints hold: per file the latest entry (a later checkpoint replaces
        an earlier one's), and the SHA-256 of every extracted image."""
        staged: dict[str, Staged] = {}
        shas: set[str] = set()
        for part in self.parts():
            with h5py.File(part, "r") as f:
                paths, sha = _strings(f["paths"]), _strings(f["sha256"])
                shas.update(sha)
                for p, s, st in zip(paths, sha, _read_stats(f, "", len(paths)), strict=True):
                    staged[p] = Staged("row", s, st)
                dups = _strings(f["dup_paths"])
                for p, s, st in zip(dups, _strings(f["dup_sha256"]),
                                    _read_stats(f, "dup_", len(dups)), strict=True):
                    staged[p] = Staged("dup", s, st)
                skips = _strings(f["skip_paths"])
                for p, st in zip(skips, _read_stats(f, "skip_", len(skips)), strict=True):
                    staged[p] = Staged("skip", "", st)
        return staged, shas

    def write(self, cp: Checkpoint) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        existing = self.parts()
        seq = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        path = self.dir / f"part-{seq:06d}.h5"
        with atomic_h5(path) as f:
            write_spec(f.attrs, self.spec)
            for key, value in self.augment.to_attrs().items():
                f.attrs[key] = value
            f.attrs["format"] = PART_FORMAT
            for name, (dataset, shape) in feature_datasets(self.spec).items():
                rows = (np.stack([row[name] for row in cp.features]) if cp.features
                        else np.zeros((0, *shape), np.float32))
                # Compressed as in the cache: what an append writes is counted (issue 19).
                ds = _create_dataset(f, dataset, len(rows), shape)
                if len(rows):
                    ds[:] = rows
            for name in ("paths", "sha256", "dup_paths", "dup_sha256", "skip_paths",
                         "skip_reasons"):
                _write_strings(f, name, getattr(cp, name))
            f.create_dataset("view", data=np.asarray(cp.views, dtype=np.int16))
            _write_stats(f, "", cp.stats)
            _write_stats(f, "dup_", cp.dup_stats)
            _write_stats(f, "skip_", cp.skip_stats)
        return path

    def clear(self) -> None:
        for part in self.parts():
            part.unlink()
        for stray in self.dir.glob(".part-*.tmp-*") if self.dir.is_dir() else []:
            stray.unlink()
        if self.dir.is_dir():
            self.dir.rmdir()


def _strings(ds: h5py.Dataset) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in ds[:]]


@dataclasses.dataclass
class _Row:
    path: str
    sha256: str
    view: int
    source: int  # index into the list of open source files
    index: int  # row in that source's features


def _copy_rows(
    dest: h5py.Dataset, rows: list[_Row], sources: list[h5py.File], name: str
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
            data = _read_rows(sources[src][name], idx[order])
            out[np.array(ks)[order]] = data
        dest[start : start + len(block)] = out
