"""What both extraction engines share: options, validation, the output's lock, and change
detection (issue 17, item 3).

The local engine (`extractor.runner`) and the Ray engine (`extractor.ray_engine`) differ only in
how they spread the work; what to extract is decided here, the same way for both:

- `plan` validates the options, the folder and an existing cache before any model loads, and
  gives the feature spec;
- `lock_output` makes a run the only writer of its cache (and its checkpoints or shards);
- `todo` compares the folder with what earlier runs recorded of each file (`Recorded`: from the
  cache and its checkpoints, `cache_records`, or from the Ray engine's shards, `shard_records`)
  and says which files to extract, which were verified unchanged, and which changed;
- `extra_attrs` are the cache attributes that describe a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from extractor import augment as aug
from extractor import backbone as bb
from extractor import locking, vgg16
from extractor.atomic import remove_stale_temps
from extractor.cache import Staging, open_cache
from extractor.cache.shards import Shard
from extractor.features import DEFAULT_POOLED_LAYERS
from extractor.runtimes.int8 import Int8Error
from extractor.spec import FeatureSpec
from extractor.walk import UNKNOWN, FileStat, Listing, identity, scan
from extractor.weights import resolve_weights

logger = logging.getLogger(__name__)


class ExtractError(RuntimeError):
    """The extraction cannot run as asked; the message says what to change."""


@dataclasses.dataclass
class Options:
    directory: Path
    out: Path
    weights: str | None = None
    image_size: int = vgg16.DEFAULT_IMAGE_SIZE
    layer: str = vgg16.DEFAULT_LAYER
    batch_size: int = 16
    #: Checkpoint after this many files, or this many seconds, whichever comes first.
    checkpoint_every: int = 512
    checkpoint_seconds: float = 60.0
    workers: int = 2
    progress: bool = True
    #: Augmented views stored per image besides the image itself, and the seed drawing them.
    augment: int = 0
    augment_seed: int = 0
    augment_mode: str = "recipe"  # or "dihedral", "flips" (extractor.augment)
    #: Layers whose global average and max pooled vectors are stored beside the maps. None:
    #: those of the existing cache, or `extractor.features.DEFAULT_POOLED_LAYERS` for a new one.
    pooled_layers: tuple[str, ...] | None = None

    @property
    def augmentation(self) -> aug.Views:
        if not self.augment:
            return aug.Views()
        return aug.Views(self.augment, self.augment_mode, self.augment_seed)
    #: "auto" (onnxruntime when installed, else keras), "keras" or "onnxruntime".
    runtime: str = bb.AUTO
    #: "fp32" (equal to Keras) or "int8" (the quantized model, `extractor.runtimes.int8`).
    precision: str = "fp32"
    #: int8 only: calibrate a new int8 model on this folder's images instead of the bundled
    #: photos.
    calibration: Path | None = None
    #: int8 only: the int8 model to use, by its SHA-256 (e.g. the one a head was trained with);
    #: None: the cache's own, else this machine's.
    quantized_sha256: str | None = None
    #: onnxruntime intra-op threads; None: the CPUs this process may use.
    threads: int | None = None


@dataclasses.dataclass
class Summary:
    out: Path
    total: int = 0  # rows in the cache after the run
    extracted: int = 0  # images run through the conv base in this run
    duplicates: int = 0  # files whose bytes matched an image already extracted
    already_cached: int = 0  # files skipped because the cache (or a checkpoint) had them
    removed: int = 0  # rows dropped because their files left the folder
    #: Cached (or checkpointed) files whose bytes changed since they were read: extracted again.
    changed: set[str] = dataclasses.field(default_factory=set)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0  # whole run, model loading included
    extract_s: float = 0.0  # the decode + forward-pass loop alone
    class_names: list[str] = dataclasses.field(default_factory=list)
    runtime: str = ""  # what ran the conv base (recorded in the cache's metadata)
    precision: str = "fp32"

    @property
    def images_per_s(self) -> float:
        """Throughput of the extraction loop (decode and forward pass; not model loading)."""
        return self.extracted / self.extract_s if self.extract_s > 0 else 0.0


def _check_output(out: Path) -> None:
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise ExtractError(f"--out must be a file path; {out} is a folder")
    if not parent.is_dir():
        raise ExtractError(f"cannot write {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ExtractError(f"cannot write {out}: folder {parent} is not writable")


def plan(opts: Options) -> tuple[Listing, FeatureSpec, Path]:
    """Validate everything that can be checked before the model loads."""
    try:
        listing = scan(opts.directory)
    except NotADirectoryError as exc:
        raise ExtractError(str(exc)) from None
    if not listing.labels:
        raise ExtractError(f"no files found in {opts.directory}")
    _check_output(opts.out)
    theirs: FeatureSpec | None = None
    if opts.out.exists():
        # Settings only: a merged cache that lost shards is refused where its rows are read.
        with open_cache(opts.out, check_sources=False) as cache:
            theirs = cache.spec
            theirs_augment = cache.augmentation
    pooled = opts.pooled_layers
    if pooled is None:
        pooled = theirs.pooled_layers if theirs is not None else DEFAULT_POOLED_LAYERS
    try:
        aug.check(opts.augment_mode, opts.augment)
        vgg16.validate(opts.layer, opts.image_size, tuple(pooled))
        runtime = bb.resolve_runtime(opts.runtime, opts.precision)
    except ValueError as exc:
        raise ExtractError(str(exc)) from None
    weights_path = resolve_weights(opts.weights)
    if theirs is not None and theirs.precision != opts.precision:
        # Refused before an int8 model is built for nothing.
        _refuse_mix(opts.out, {"precision": (opts.precision, theirs.precision)})
    # An int8 cache is extended with the very model that made it, found by its hash.
    same_model = (theirs.quantized_sha256 if theirs is not None and theirs.precision == "int8"
                  and opts.precision == "int8" else opts.quantized_sha256)
    try:
        spec = bb.make_spec(weights_path, opts.layer, opts.image_size, runtime, tuple(pooled),
                            precision=opts.precision, quantized_sha256=same_model,
                            calibration=opts.calibration)
    except (Int8Error, ValueError) as exc:
        raise ExtractError(str(exc)) from None
    if theirs is not None:
        diffs = spec.file_differences(theirs)
        if diffs.keys() - {"pooled_layers"}:
            _refuse_mix(opts.out, diffs)
        if diffs:  # only the pooled layers differ: say how to extend it
            def show(layers: tuple[str, ...]) -> str:
                return ",".join(layers) or "none"

            raise ExtractError(
                f"{opts.out} holds the pooled vectors of other layers (pooled_layers: cache has "
                f"{show(theirs.pooled_layers)}, this run {show(spec.pooled_layers)}). A cache "
                f"never mixes them: pass --pooled-layers {show(theirs.pooled_layers)} (or leave "
                f"it out) to extend it, choose another --out, or delete {opts.out} to rebuild it."
            )
        if theirs_augment != opts.augmentation:
            raise ExtractError(
                f"{opts.out} holds {theirs_augment.count} augmented views per image (seed "
                f"{theirs_augment.seed}; {theirs_augment.description or 'none'}); this run asks "
                f"for {opts.augment} (seed {opts.augment_seed}; {opts.augment_mode}). Use the "
                f"same --augment, --augment-seed and --augment-mode, another --out, or delete "
                f"{opts.out} to rebuild it."
            )
    Staging(opts.out, spec, opts.augmentation).check()
    return listing, spec, weights_path


@contextlib.contextmanager
def lock_output(out: Path) -> Iterator[None]:
    """Be the only run writing `out` (and its checkpoints or shards) for the block."""
    _check_output(out)
    try:
        with locking.exclusive(out):
            # Nobody else writes `out` now: a temporary beside it is a killed run's leftover.
            for stale in remove_stale_temps(out):
                logger.info("removed %s, left by an interrupted run", stale.name)
            yield
    except locking.Busy as exc:
        raise ExtractError(
            f"{out} is being written by another extract ({exc.holder}); wait for it to finish, "
            f"or choose another --out (lock file: {exc.lock})"
        ) from None


def _refuse_mix(out: Path, diffs: Mapping[str, tuple[object, object]]) -> None:
    detail = "; ".join(f"{k}: cache has {b!r}, this run {a!r}" for k, (a, b) in diffs.items())
    raise ExtractError(
        f"{out} was made with other settings ({detail}). Features made differently are never "
        f"mixed: choose another --out, or delete {out} to rebuild it."
    )


# --------------------------------------------------------------------------- change detection


@dataclasses.dataclass(frozen=True)
class Recorded:
    """What an earlier run recorded of one file (in the cache, a checkpoint or a shard)."""

    #: SHA-256 of the bytes it read; None: the file was recorded as unusable (a skip), tried
    #: again whenever it looks changed.
    sha256: str | None
    #: Size and mtime when it was read (`UNKNOWN` when not recorded).
    stat: FileStat = UNKNOWN
    #: Records made before file stats were kept trust files older than this (ns): the cache's
    #: or shard's own mtime, as those engines always did. None: no such trust.
    since_ns: int | None = None


@dataclasses.dataclass
class Todo:
    """What a run has to do, by `todo`."""

    #: Files to extract, in the folder's order: new, changed, or recorded as unusable and
    #: changed since.
    paths: list[str] = dataclasses.field(default_factory=list)
    #: Files found unchanged by hashing (their stat had moved): their fresh stat, to record.
    verified: dict[str, FileStat] = dataclasses.field(default_factory=dict)
    #: Recorded files (not skips) whose bytes changed since: extracted again.
    changed: set[str] = dataclasses.field(default_factory=set)


def todo(root: Path, paths: Iterable[str], recorded: Mapping[str, Recorded]) -> Todo:
    """Which of `paths` (relative to `root`) to extract, given what earlier runs recorded.

    A recorded file with the same size and mtime is unchanged without being read (one stat per
    file, issue 19, item 2); otherwise its bytes are hashed and compared (`_unchanged`)."""
    out = Todo()
    base = str(root)
    for path in paths:
        rec = recorded.get(path)
        if rec is None:
            out.paths.append(path)
            continue
        if _stat_matches(f"{base}/{path}", rec.stat):
            continue  # the common case, kept cheap: a string, not a Path, per file
        same, fresh = _unchanged(root / path, rec.sha256, rec.stat, rec.since_ns)
        if same:
            if fresh is not None:
                out.verified[path] = fresh
            continue
        out.paths.append(path)
        if rec.sha256 is not None:
            out.changed.add(path)
    return out


@dataclasses.dataclass
class CacheRecords:
    """What a cache file and its checkpoints (`<cache>.parts/`) hold before a run."""

    #: Per file the latest record: the cache's row, replaced by a checkpoint's entry.
    recorded: dict[str, Recorded] = dataclasses.field(default_factory=dict)
    #: path -> SHA-256 of the cache's own rows (files the cache holds).
    cached: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Files the cache lists as skipped, and its class names (None: no cache yet).
    skipped: set[str] = dataclasses.field(default_factory=set)
    class_names: list[str] | None = None
    #: SHA-256 of every image the checkpoints hold.
    part_shas: set[str] = dataclasses.field(default_factory=set)


def cache_records(out: Path, staging: Staging) -> CacheRecords:
    """The records of the cache at `out` (if any) and of its checkpoints, for `todo`.

    Files the cache lists as skipped are not recorded: they are tried again every run, as the
    local engine always did (a failure costs one decode)."""
    rec = CacheRecords()
    if out.exists():
        with open_cache(out) as cache:
            stats = cache.file_stats
            since: int | None = None
            if stats is None:  # a cache from before stats were recorded: trust older files
                since = out.stat().st_mtime_ns
                stats = [UNKNOWN] * len(cache)
            for p, sha, st in zip(cache.paths, cache.sha256, stats, strict=True):
                rec.recorded[p] = Recorded(sha, st, since)
                rec.cached[p] = sha
            rec.skipped = {p for p, _ in cache.skipped}
            rec.class_names = cache.class_names
    staged, rec.part_shas = staging.contents()
    for p, entry in staged.items():
        rec.recorded[p] = Recorded(entry.sha256 if entry.kind != "skip" else None, entry.stat)
    return rec


def shard_records(shards: Sequence[Shard]) -> dict[str, Recorded]:
    """The records of shards (oldest first; a self-contained cache may be one), for `todo`.

    As `cache.shards.merge` resolves them: a row beats a skip, and the newest shard's rows win.
    A skipped file is trusted while it is older than the newest shard that skipped it; rows of
    shards from before stats were kept, while older than their shard."""
    rows: dict[str, Recorded] = {}
    skipped_at: dict[str, int] = {}
    for shard in shards:
        since = None if shard.stats is not None else shard.mtime_ns
        for i, (p, sha) in enumerate(zip(shard.paths, shard.sha256, strict=True)):
            stat = shard.stats[i] if shard.stats is not None else UNKNOWN
            rows[p] = Recorded(sha, stat, since)
        for p in shard.skipped:
            skipped_at[p] = max(skipped_at.get(p, 0), shard.mtime_ns)
    skips = {p: Recorded(None, UNKNOWN, when) for p, when in skipped_at.items() if p not in rows}
    return {**skips, **rows}


def _stat_matches(file: str, recorded: FileStat) -> bool:
    """Same size and known, same mtime as recorded (`FileStat.matches`), without a Path."""
    if recorded.mtime_ns < 0:
        return False
    try:
        st = os.stat(file)
    except OSError:
        return False
    return st.st_size == recorded.size and st.st_mtime_ns == recorded.mtime_ns


def _unchanged(
    file: Path, sha256: str | None, recorded: FileStat, since_ns: int | None
) -> tuple[bool, FileStat | None]:
    """Whether `file` still holds what was recorded of it, and its stat to record when checked.

    Same size and mtime as recorded: unchanged, without reading it. Otherwise (or when the
    recorded mtime is unknown) its bytes are hashed and compared. `sha256` None: a file recorded
    as unusable, tried again whenever it looks changed. `since_ns`: a cache made before stats
    were recorded trusts files older than itself, as it always did.
    """
    checked_at = time.time_ns()
    try:
        st = file.stat()
    except OSError:
        return False, None  # unreadable now: extract it again, which records why
    if recorded.matches(st):
        return True, None
    if since_ns is not None and st.st_mtime_ns < since_ns:
        return True, identity(st, checked_at)
    if sha256 is None:
        return False, None
    try:
        same = hashlib.sha256(file.read_bytes()).hexdigest() == sha256
    except OSError:
        return False, None
    return (True, identity(st, checked_at)) if same else (False, None)


# --------------------------------------------------------------------------- the cache's attributes


def extra_attrs(opts: Options, weights_path: Path, quantized_sha256: str = "") -> dict[str, str]:
    """Cache attributes that describe the run (not the features): both engines write them."""
    import importlib.metadata as md

    try:
        keras_version = md.version("keras")
    except md.PackageNotFoundError:
        keras_version = "unknown"
    from extractor.runtimes.cpu import detect

    extra = {}
    if quantized_sha256:
        from extractor.runtimes import int8

        extra["int8_weights"] = int8.scheme_of(weights_path, quantized_sha256)
    return {
        "cpu": detect().describe(),  # int8 features depend on it (extractor.runtimes.int8)
        **extra,
        "weights_source": opts.weights or "default",
        "weights_file": weights_path.name,
        "keras_version": keras_version,
        "source_dir": str(opts.directory.resolve()),
    }
