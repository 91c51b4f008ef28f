"""Drives an extraction: folder scan -> decode threads -> conv base -> checkpoints -> cache.

Decoding (file read, SHA-256, image decode and resize) runs in a small thread pool a bounded
window ahead of the model, so the model never waits on the disk and memory stays flat however
many files there are. The model runs on the calling thread.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from extractor import augment as aug
from extractor import backbone as bb
from extractor.cache import (
    AugmentSettings,
    Checkpoint,
    Staging,
    consolidate,
    open_cache,
)
from extractor.features import Features
from extractor.images import ImageError, decode_image
from extractor.runtimes.int8 import Int8Error
from extractor.spec import FeatureSpec
from extractor.walk import Listing, scan
from extractor.weights import resolve_weights

logger = logging.getLogger(__name__)

#: Pixels -> named features (`extractor.features`); a plain array is taken as the main maps.
FeatureFn = Callable[[NDArray[np.uint8]], "Features | NDArray[np.float32]"]


def main_maps(out: Features | NDArray[np.float32], layer: str) -> NDArray[np.float32]:
    """The main layer's maps from a feature function's result."""
    return out[layer] if isinstance(out, Mapping) else out


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
    augment_mode: str = "recipe"  # or "dihedral" (extractor.augment)

    @property
    def augmentation(self) -> AugmentSettings:
        if not self.augment:
            return AugmentSettings()
        return AugmentSettings(self.augment, self.augment_seed, aug.describe(self.augment_mode))
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
    #: Cached files whose bytes changed since the cache was written: extracted again.
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
    try:
        data = (root / rel).read_bytes()
    except OSError as exc:
        return LoadedFile(rel, "", None, f"unreadable file: {exc.strerror or exc}")
    return decode_bytes(rel, data, size, augment, seed, mode)


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
    try:
        bb.validate(opts.layer, opts.image_size)
        runtime = bb.resolve_runtime(opts.runtime, opts.precision)
    except ValueError as exc:
        raise ExtractError(str(exc)) from None
    weights_path = resolve_weights(opts.weights)
    theirs: FeatureSpec | None = None
    if opts.out.exists():
        with open_cache(opts.out) as cache:
            theirs = cache.spec
            theirs_augment = cache.augmentation
    if theirs is not None and theirs.precision != opts.precision:
        # Refused before an int8 model is built for nothing.
        _refuse_mix(opts.out, {"precision": (opts.precision, theirs.precision)})
    # An int8 cache is extended with the very model that made it, found by its hash.
    same_model = (theirs.quantized_sha256 if theirs is not None and theirs.precision == "int8"
                  and opts.precision == "int8" else opts.quantized_sha256)
    try:
        spec = bb.make_spec(weights_path, opts.layer, opts.image_size, runtime,
                            precision=opts.precision, quantized_sha256=same_model,
                            calibration=opts.calibration)
    except (Int8Error, ValueError) as exc:
        raise ExtractError(str(exc)) from None
    if theirs is not None:
        diffs = spec.differences(theirs)
        if diffs:
            _refuse_mix(opts.out, diffs)
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


def _refuse_mix(out: Path, diffs: Mapping[str, tuple[object, object]]) -> None:
    detail = "; ".join(f"{k}: cache has {b!r}, this run {a!r}" for k, (a, b) in diffs.items())
    raise ExtractError(
        f"{out} was made with other settings ({detail}). Features made differently are never "
        f"mixed: choose another --out, or delete {out} to rebuild it."
    )


def run(opts: Options, features_fn: FeatureFn | None = None) -> Summary:
    """Extract `opts.directory` into `opts.out`, resuming whatever a previous run left."""
    t0 = time.perf_counter()
    listing, spec, weights_path = plan(opts)
    summary = Summary(out=opts.out, class_names=listing.class_names)
    for name in listing.ignored:
        logger.warning("ignoring %s: files beside class folders belong to no class", name)

    previous: dict[str, str] = {}  # path -> sha256 of the files the cache holds
    previous_skipped: set[str] = set()
    previous_classes: list[str] | None = None
    if opts.out.exists():
        with open_cache(opts.out) as cache:
            previous = dict(zip(cache.paths, cache.sha256, strict=True))
            previous_skipped = {p for p, _ in cache.skipped}
            previous_classes = cache.class_names
    staging = Staging(opts.out, spec, opts.augmentation)
    staged_rows, staged_skips, part_shas = staging.contents()
    done = staged_rows | set(staged_skips)
    summary.changed = _changed_since(opts.out, listing, previous) if previous else set()
    todo = [p for p in listing.labels
            if (p not in previous or p in summary.changed) and p not in done]
    summary.already_cached = len(listing.labels) - len(todo)
    summary.runtime = spec.runtime
    summary.precision = spec.precision
    summary.removed = sum(1 for p in previous if p not in listing.labels)

    if todo:
        if features_fn is None:
            features_fn = bb.ConvBase(weights_path, opts.image_size, opts.layer, spec.runtime,
                                      threads=opts.threads, precision=spec.precision,
                                      quantized_sha256=spec.quantized_sha256 or None)
        made_by = getattr(getattr(features_fn, "spec", None), "runtime", None)
        if isinstance(made_by, str) and made_by != staging.spec.runtime:
            # A conv base handed in by the caller says which runtime really makes the features.
            staging.spec = dataclasses.replace(staging.spec, runtime=made_by)
            summary.runtime = made_by
        seen = set(previous.values()) | part_shas
        t_loop = time.perf_counter()
        try:
            _extract(opts, listing, todo, seen, staging, features_fn, summary)
        finally:
            summary.extract_s = time.perf_counter() - t_loop

    staged_rows, staged_skips, _ = staging.contents()
    changed = (
        bool(staged_rows)
        or set(staged_skips) != previous_skipped
        or summary.removed > 0
        or previous_classes != listing.class_names
    )
    if changed:
        summary.total, summary.skipped = consolidate(
            opts.out, staging, listing.labels, listing.class_names,
            _extra_attrs(opts, weights_path),
        )
    else:
        # Nothing new: files that failed before failed again; keep the cache file as it is.
        staging.clear()
        with open_cache(opts.out) as cache:
            summary.total, summary.skipped = cache.n_images, cache.skipped
    summary.elapsed_s = time.perf_counter() - t0
    return summary


def _changed_since(out: Path, listing: Listing, previous: dict[str, str]) -> set[str]:
    """Cached files modified after the cache file was written and whose bytes now differ.

    Only files with a newer modification time are read and hashed, so a re-run over an
    unchanged folder reads no image. (A file replaced by one carrying an older timestamp, as
    `cp -p` or `rsync -t` may leave it, is not noticed: delete the cache to rebuild.)
    """
    since = out.stat().st_mtime_ns
    changed: set[str] = set()
    for path, sha in previous.items():
        if path not in listing.labels:
            continue
        file = listing.root / path
        try:
            if file.stat().st_mtime_ns < since:
                continue
            if hashlib.sha256(file.read_bytes()).hexdigest() != sha:
                changed.add(path)
        except OSError:
            changed.add(path)  # unreadable now: extract it again, which records why
    return changed


def _extra_attrs(opts: Options, weights_path: Path) -> dict[str, str]:
    import importlib.metadata as md

    try:
        keras_version = md.version("keras")
    except md.PackageNotFoundError:
        keras_version = "unknown"
    from extractor.runtimes.cpu import detect

    return {
        "cpu": detect().describe(),  # int8 features depend on it (extractor.runtimes.int8)
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
    pending_dups: list[tuple[str, str]] = []  # duplicates of images still in `pending`
    last_flush = time.monotonic()
    window = max(opts.batch_size * 4, opts.workers * 4)

    def run_batch() -> None:
        nonlocal pending_rows
        if not pending:
            return
        batch = np.stack([px for item in pending for px in item.rows])
        feats = iter(main_maps(features_fn(batch), staging.spec.layer))
        for item in pending:
            for view in range(len(item.rows)):
                cp.paths.append(item.path)
                cp.sha256.append(item.sha256)
                cp.views.append(view)
                cp.features.append(next(feats))
        summary.extracted += len(pending)
        pending_rows = 0
        for path, sha in pending_dups:
            cp.dup_paths.append(path)
            cp.dup_sha256.append(sha)
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
            elif item.sha256 in pending_shas:
                pending_dups.append((item.path, item.sha256))
                summary.duplicates += 1
            elif item.sha256 in seen:
                cp.dup_paths.append(item.path)
                cp.dup_sha256.append(item.sha256)
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
