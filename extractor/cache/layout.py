"""The cache's file format: dataset names, attributes, dimensions, chunking and encodings.

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

Every module of `extractor.cache` (reader, writer, staging, rows, shards) writes and reads these
datasets through the helpers here, so the format is defined in this one place. Nothing in this
package knows how features are made: it imports no engine, conv base or runtime (the import
rules are checked by tests/test_layers.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy as np
from numpy.typing import NDArray

from extractor import features as named
from extractor.features import Features
from extractor.spec import FeatureSpec
from extractor.walk import UNKNOWN, FileStat

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
STR = h5py.string_dtype("utf-8")


class CacheError(RuntimeError):
    """A cache file is missing, unreadable, or not a feature cache."""


def package_version() -> str:
    from extractor import __version__

    return __version__


def from_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [from_attr(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_rows(dataset: h5py.Dataset, sorted_idx: NDArray[np.int64]) -> NDArray[np.float32]:
    """Rows at increasing (possibly repeated) indices, read as few contiguous slices."""
    if len(sorted_idx) == 0:
        return np.zeros((0, *dataset.shape[1:]), dtype=np.float32)
    lo, hi = int(sorted_idx[0]), int(sorted_idx[-1]) + 1
    if hi - lo <= 4 * len(sorted_idx):
        return np.asarray(dataset[lo:hi], dtype=np.float32)[sorted_idx - lo]
    unique, inverse = np.unique(sorted_idx, return_inverse=True)
    return np.asarray(dataset[unique], dtype=np.float32)[inverse]


def chunk_rows(feature_shape: Sequence[int]) -> int:
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


def create_dataset(f: h5py.Group, path: str, n: int, row_shape: Sequence[int]) -> h5py.Dataset:
    pooled = path != "features"
    return f.create_dataset(
        path,
        shape=(n, *row_shape),
        dtype=np.float32,
        chunks=(max(1, min(n, chunk_rows(row_shape))), *row_shape) if n else None,
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


def write_strings(group: h5py.Group, name: str, values: Sequence[str]) -> None:
    group.create_dataset(name, data=np.array(list(values), dtype=object), dtype=STR)


def strings(ds: h5py.Dataset) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in ds[:]]


def write_stats(group: h5py.Group, prefix: str, stats: Sequence[FileStat]) -> None:
    """`<prefix>file_size` and `<prefix>file_mtime_ns`, (N,) int64: see `extractor.walk`."""
    arr = np.array([tuple(st) for st in stats], dtype=np.int64).reshape(len(stats), 2)
    group.create_dataset(f"{prefix}file_size", data=arr[:, 0])
    group.create_dataset(f"{prefix}file_mtime_ns", data=arr[:, 1])


def read_stats(group: h5py.Group, prefix: str, n: int) -> list[FileStat]:
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
        attrs[key] = np.array(value, dtype=STR) if key == "pooled_layers" else value


def set_attrs(
    f: h5py.File, spec: FeatureSpec, class_names: Sequence[str], extra: Mapping[str, Any]
) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["class_names"] = np.array(list(class_names), dtype=object) if class_names else (
        np.zeros((0,), dtype=STR)
    )
    write_spec(f.attrs, spec)
    f.attrs["package_version"] = package_version()
    f.attrs["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    for key, value in extra.items():
        f.attrs[key] = value
