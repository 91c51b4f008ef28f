"""Drives an extraction: folder scan -> decode threads -> conv base -> checkpoints -> cache.

Decoding (file read, SHA-256, image decode and resize) runs in a small thread pool a bounded
window ahead of the model, so the model never waits on the disk and memory stays flat however
many files there are. The model runs on the calling thread.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from extractor import augment as aug
from extractor import backbone as bb
from extractor import features as named
from extractor import locking
from extractor.atomic import remove_stale_temps
from extractor.cache import (
    AugmentSettings,
    Checkpoint,
    Staging,
    as_features,
    consolidate,
    open_cache,
)
from extractor.features import DEFAULT_POOLED_LAYERS, Features
from extractor.images import ImageError, decode_image
from extractor.runtimes.int8 import Int8Error
from extractor.spec import FeatureSpec
from extractor.walk import UNKNOWN, FileStat, Listing, identity, scan
from extractor.weights import resolve_weights

logger = logging.getLogger(__name__)

#: Pixels -> named features (`extractor.features`): the maps of the spec's layer and the
#: pooled vectors of its pooled_layers (the main layer's poolings may be left out: they are
#: derived from its maps).
FeatureFn = Callable[[NDArray[np.uint8]], Features]


class ExtractError(RuntimeError):
    """The extraction cannot run as asked; the message says what to change."""


@dataclasses.dataclass
class Options:
    directory: Path
    out: Path
    weights: str | None = None
    image_size: int = bb.DEFAULT_IMAGE_SIZE
    layer: str = bb.DEFAULT_LAYER
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
    def augmentation(self) -> AugmentSettings:
        if not self.augment:
            return AugmentSettings()
        return AugmentSettings(self.augment, self.augment_seed, aug.describe(self.augment_mode),
                               self.augment_mode)
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


@dataclasses.dataclass
class LoadedFile:
    path: str
    sha256: str
    pixels: NDArray[np.uint8] | None
    error: str | None
    #: Augmented views 1..K of `pixels` (empty without --augment).
    views: list[NDArray[np.uint8]] = dataclasses.field(default_factory=list)
    #: Size and mtime of the file as read (recorded, to notice later changes).
    stat: FileStat = UNKNOWN

    @property
    def rows(self) -> list[NDArray[np.uint8]]:
        """The image itself, then its views: what goes through the conv base."""
        return [] if self.pixels is None else [self.pixels, *self.views]


def decode_bytes(
    rel: str, data: bytes, size: int, augment: int = 0, seed: int = 0, mode: str = "recipe"
) -> LoadedFile:
    """Hash, decode and (with `augment` > 0) make the augmented views of one file's bytes."""
    sha = hashlib.sha256(data).hexdigest()
    try:
        pixels = decode_image(data, size)
    except ImageError as exc:
        return LoadedFile(rel, sha, None, str(exc))
    views = [aug.make_view(pixels, sha, v, seed, mode) for v in range(1, augment + 1)]
    return LoadedFile(rel, sha, pixels, None, views)


def load_file(
    root: Path, rel: str, size: int, augment: int = 0, seed: int = 0, mode: str = "recipe"
) -> LoadedFile:
    """Read one file and `decode_bytes` it; an unreadable file is recorded, not raised."""
    read_at = time.time_ns()
    try:
        with open(root / rel, "rb") as fh:
            data = fh.read()
            # After the read: a file modified while it was read gets an mtime past `read_at`,
            # recorded as unknown, so the next run checks it again.
            st = os.fstat(fh.fileno())
    except OSError as exc:
        return LoadedFile(rel, "", None, f"unreadable file: {exc.strerror or exc}")
    loaded = decode_bytes(rel, data, size, augment, seed, mode)
    loaded.stat = identity(st, read_at)
    return loaded


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
        bb.validate(opts.layer, opts.image_size, tuple(pooled))
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
                f"{opts.out} holds {theirs_augment.views} augmented views per image (seed "
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


def run(opts: Options, features_fn: FeatureFn | None = None) -> Summary:
    """Extract `opts.directory` into `opts.out`, resuming whatever a previous run left."""
    with lock_output(opts.out):
        return _run(opts, features_fn)


def _run(opts: Options, features_fn: FeatureFn | None) -> Summary:
    t0 = time.perf_counter()
    listing, spec, weights_path = plan(opts)
    summary = Summary(out=opts.out, class_names=listing.class_names)
    for name in listing.ignored:
        logger.warning("ignoring %s: files beside class folders belong to no class", name)

    previous: dict[str, tuple[str, FileStat]] = {}  # path -> (sha256, stat) of cached files
    previous_skipped: set[str] = set()
    previous_classes: list[str] | None = None
    since: int | None = None  # caches without recorded stats: the old watermark, their mtime
    if opts.out.exists():
        with open_cache(opts.out) as cache:
            stats = cache.file_stats
            if stats is None:
                since = opts.out.stat().st_mtime_ns
                stats = [UNKNOWN] * len(cache)
            previous = dict(zip(cache.paths, zip(cache.sha256, stats, strict=True), strict=True))
            previous_skipped = {p for p, _ in cache.skipped}
            previous_classes = cache.class_names
    staging = Staging(opts.out, spec, opts.augmentation)
    staged, part_shas = staging.contents()
    todo: list[str] = []
    verified: dict[str, FileStat] = {}
    root = str(listing.root)
    for path in listing.labels:
        entry = staged.get(path)
        recorded: tuple[str | None, FileStat, int | None]
        if entry is None and path in previous and _stat_matches(f"{root}/{path}",
                                                                previous[path][1]):
            continue  # the common case, kept cheap: one stat per file (issue 19, item 2)
        if entry is not None:
            recorded = (entry.sha256 or None, entry.stat, None)
        elif path in previous:
            recorded = (*previous[path], since)
        else:
            todo.append(path)
            continue
        same, fresh = _unchanged(listing.root / path, *recorded)
        if same:
            if fresh is not None:
                verified[path] = fresh
            continue
        todo.append(path)
        if entry is None or entry.kind != "skip":
            summary.changed.add(path)
    summary.already_cached = len(listing.labels) - len(todo)
    summary.runtime = spec.runtime
    summary.precision = spec.precision
    summary.removed = sum(1 for p in previous if p not in listing.labels)

    if todo:
        if features_fn is None:
            features_fn = conv_base(weights_path, spec, opts.threads)
        made_by = getattr(getattr(features_fn, "spec", None), "runtime", None)
        if isinstance(made_by, str) and made_by != staging.spec.runtime:
            # A conv base handed in by the caller says which runtime really makes the features.
            staging.spec = dataclasses.replace(staging.spec, runtime=made_by)
            summary.runtime = made_by
        seen = {sha for sha, _ in previous.values()} | part_shas
        t_loop = time.perf_counter()
        try:
            _extract(opts, listing, todo, seen, staging, features_fn, summary)
        finally:
            summary.extract_s = time.perf_counter() - t_loop

    staged, _ = staging.contents()
    changed = (
        any(e.kind != "skip" for e in staged.values())
        or {p for p, e in staged.items() if e.kind == "skip"} != previous_skipped
        or summary.removed > 0
        or previous_classes != listing.class_names
    )
    if changed:
        summary.total, summary.skipped = consolidate(
            opts.out, staging, listing.labels, listing.class_names,
            extra_attrs(opts, weights_path, spec.quantized_sha256), verified,
        )
    else:
        # Nothing new: files that failed before failed again; keep the cache file as it is.
        staging.clear()
        with open_cache(opts.out) as cache:
            summary.total, summary.skipped = cache.n_images, cache.skipped
    summary.elapsed_s = time.perf_counter() - t0
    return summary


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


def conv_base(weights_path: Path, spec: FeatureSpec, threads: int | None = None) -> bb.ConvBase:
    """The conv base that makes `spec`'s features (both engines build it here)."""
    return bb.ConvBase(weights_path, spec.input_size, spec.layer, spec.runtime, threads=threads,
                       pooled_layers=spec.pooled_layers, precision=spec.precision,
                       quantized_sha256=spec.quantized_sha256 or None)


def forward(
    features_fn: FeatureFn, items: Sequence[LoadedFile], spec: FeatureSpec,
    batch_size: int | None = None,
) -> Features:
    """The features of every row of `items` (each image, then its views), in that order, run
    `batch_size` rows at a time (None: all at once) and checked against `spec`."""
    rows = [px for item in items for px in item.rows]
    if not rows:
        return named.empty(spec)
    step = batch_size or len(rows)
    try:
        chunks = [as_features(features_fn(np.stack(rows[i : i + step])), spec,
                              len(rows[i : i + step]))
                  for i in range(0, len(rows), step)]
    except ValueError as exc:
        raise ExtractError(f"the conv base does not give the features this cache stores: "
                           f"{exc}") from None
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


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


def _extract(
    opts: Options,
    listing: Listing,
    todo: list[str],
    seen: set[str],
    staging: Staging,
    features_fn: FeatureFn,
    summary: Summary,
) -> None:
    from tqdm import tqdm

    cp = Checkpoint()
    pending: list[LoadedFile] = []  # decoded, waiting for a full batch
    pending_rows = 0  # images and their views in `pending`
    pending_shas: set[str] = set()
    # Duplicates of images still in `pending`: (path, sha256, stat).
    pending_dups: list[tuple[str, str, FileStat]] = []
    last_flush = time.monotonic()
    window = max(opts.batch_size * 4, opts.workers * 4)

    def run_batch() -> None:
        nonlocal pending_rows
        if not pending:
            return
        feats = forward(features_fn, pending, staging.spec)
        row = 0
        for item in pending:
            for view in range(len(item.rows)):
                cp.paths.append(item.path)
                cp.sha256.append(item.sha256)
                cp.views.append(view)
                cp.stats.append(item.stat)
                cp.features.append({name: arr[row] for name, arr in feats.items()})
                row += 1
        summary.extracted += len(pending)
        pending_rows = 0
        for path, sha, stat in pending_dups:
            cp.dup_paths.append(path)
            cp.dup_sha256.append(sha)
            cp.dup_stats.append(stat)
        pending.clear()
        pending_shas.clear()
        pending_dups.clear()

    def flush() -> None:
        nonlocal cp, last_flush
        if len(cp):
            staging.write(cp)
        cp = Checkpoint()
        last_flush = time.monotonic()

    bar = tqdm(total=len(todo), unit="img", disable=not opts.progress, smoothing=0.1,
               dynamic_ncols=True)
    pool = cf.ThreadPoolExecutor(max_workers=max(1, opts.workers), thread_name_prefix="decode")
    queue: collections.deque[cf.Future[LoadedFile]] = collections.deque()
    files = iter(todo)
    try:
        for rel in files:
            queue.append(pool.submit(load_file, listing.root, rel, opts.image_size, opts.augment,
                                     opts.augment_seed, opts.augment_mode))
            if len(queue) >= window:
                break
        while queue:
            item = queue.popleft().result()
            nxt = next(files, None)
            if nxt is not None:
                queue.append(pool.submit(load_file, listing.root, nxt, opts.image_size,
                                         opts.augment, opts.augment_seed, opts.augment_mode))
            if item.error is not None:
                cp.skip_paths.append(item.path)
                cp.skip_reasons.append(item.error)
                cp.skip_stats.append(item.stat)
            elif item.sha256 in pending_shas:
                pending_dups.append((item.path, item.sha256, item.stat))
                summary.duplicates += 1
            elif item.sha256 in seen:
                cp.dup_paths.append(item.path)
                cp.dup_sha256.append(item.sha256)
                cp.dup_stats.append(item.stat)
                summary.duplicates += 1
            else:
                pending.append(item)
                pending_rows += len(item.rows)
                pending_shas.add(item.sha256)
                seen.add(item.sha256)
                if pending_rows >= opts.batch_size:
                    run_batch()
            bar.update(1)
            if not pending and (
                len(cp) >= opts.checkpoint_every
                or time.monotonic() - last_flush >= opts.checkpoint_seconds
            ):
                flush()
        run_batch()
        flush()
    except KeyboardInterrupt:
        # Keep what is complete; images still waiting for their batch are redone next time.
        flush()
        raise
    finally:
        bar.close()
        for fut in queue:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
