"""A run in progress: checkpoint files in `<cache>.parts/`, append-only, complete files only.

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
from pathlib import Path

import h5py
import numpy as np

from extractor.atomic import atomic_h5
from extractor.augment import Views
from extractor.cache.layout import (
    PART_FORMAT,
    CacheError,
    create_dataset,
    feature_datasets,
    from_attr,
    read_stats,
    strings,
    write_spec,
    write_stats,
    write_strings,
)
from extractor.features import Features
from extractor.spec import FeatureSpec
from extractor.walk import FileStat


def parts_dir(cache_path: Path) -> Path:
    """Where a run's checkpoints live until they are folded into the cache."""
    return cache_path.with_name(cache_path.name + ".parts")


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
        self, cache_path: Path, spec: FeatureSpec, augment: Views | None = None
    ) -> None:
        self.dir = parts_dir(cache_path)
        self.spec = spec
        self.augment = augment or Views()

    def parts(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(self.dir.glob("part-*.h5"))

    def check(self) -> None:
        """Refuse checkpoints left by a run with other settings (never mix features)."""
        for part in self.parts():
            with h5py.File(part, "r") as f:
                attrs = {k: from_attr(v) for k, v in f.attrs.items()}
            theirs = FeatureSpec.from_dict(attrs)
            diffs = list(self.spec.file_differences(theirs))
            if Views.from_attrs(attrs) != self.augment:
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
                paths, sha = strings(f["paths"]), strings(f["sha256"])
                shas.update(sha)
                for p, s, st in zip(paths, sha, read_stats(f, "", len(paths)), strict=True):
                    staged[p] = Staged("row", s, st)
                dups = strings(f["dup_paths"])
                for p, s, st in zip(dups, strings(f["dup_sha256"]),
                                    read_stats(f, "dup_", len(dups)), strict=True):
                    staged[p] = Staged("dup", s, st)
                skips = strings(f["skip_paths"])
                for p, st in zip(skips, read_stats(f, "skip_", len(skips)), strict=True):
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
                ds = create_dataset(f, dataset, len(rows), shape)
                if len(rows):
                    ds[:] = rows
            for name in ("paths", "sha256", "dup_paths", "dup_sha256", "skip_paths",
                         "skip_reasons"):
                write_strings(f, name, getattr(cp, name))
            f.create_dataset("view", data=np.asarray(cp.views, dtype=np.int16))
            write_stats(f, "", cp.stats)
            write_stats(f, "dup_", cp.dup_stats)
            write_stats(f, "skip_", cp.skip_stats)
        return path

    def clear(self) -> None:
        for part in self.parts():
            part.unlink()
        for stray in self.dir.glob(".part-*.tmp-*") if self.dir.is_dir() else []:
            stray.unlink()
        if self.dir.is_dir():
            self.dir.rmdir()
