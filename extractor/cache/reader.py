"""Reading a cache: `open_cache` / `FeatureCache`, and the check that a cache whose rows live
in other files (row files of appends, shards of the Ray engine) can read every one of them."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from numpy.typing import NDArray

from extractor.augment import Views
from extractor.cache.layout import (
    FORMAT,
    CacheError,
    from_attr,
    read_rows,
    read_stats,
)
from extractor.features import pool as pool_maps
from extractor.spec import FeatureSpec, parse_feature_name
from extractor.walk import FileStat


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
        return {k: from_attr(v) for k, v in self._file.attrs.items()}

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
        return read_stats(self._file, "", len(self))

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
    def augmentation(self) -> Views:
        return Views.from_attrs(self.attrs)

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
                rows = read_rows(dataset, chunk[order])
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
            rows = read_rows(feats, chunk[order])
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
