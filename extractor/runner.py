"""The local engine: folder scan -> decode threads -> conv base -> checkpoints -> cache.

What to extract (options, the output's lock, change detection) is `extractor.planner`'s, shared
with the Ray engine; storing it is `extractor.cache`'s (checkpoints, then `consolidate`).

Decoding (file read, SHA-256, image decode and resize) runs in a small thread pool a bounded
window ahead of the model, so the model never waits on the disk and memory stays flat however
many files there are. The model runs on the calling thread.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from extractor import backbone as bb
from extractor import pipeline
from extractor.augment import Views
from extractor.cache import Checkpoint, Staging, as_features, consolidate, open_cache
from extractor.features import Features
from extractor.pipeline import FeatureFn, LoadedFile, load_bytes
from extractor.planner import (
    ExtractError,
    Options,
    Summary,
    cache_records,
    extra_attrs,
    lock_output,
    plan,
)
from extractor.planner import todo as todo_files
from extractor.spec import FeatureSpec
from extractor.walk import FileStat, Listing, identity

logger = logging.getLogger(__name__)

def load_file(root: Path, rel: str, size: int, views: Views | None = None) -> LoadedFile:
    """Read one file and `pipeline.load_bytes` it; an unreadable file is recorded, not
    raised."""
    read_at = time.time_ns()
    try:
        with open(root / rel, "rb") as fh:
            data = fh.read()
            # After the read: a file modified while it was read gets an mtime past `read_at`,
            # recorded as unknown, so the next run checks it again.
            st = os.fstat(fh.fileno())
    except OSError as exc:
        return LoadedFile(rel, "", None, f"unreadable file: {exc.strerror or exc}")
    loaded = load_bytes(rel, data, size, views)
    loaded.stat = identity(st, read_at)
    return loaded


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

    staging = Staging(opts.out, spec, opts.augmentation)
    previous = cache_records(opts.out, staging)
    work = todo_files(listing.root, listing.labels, previous.recorded)
    todo, verified = work.paths, work.verified
    summary.changed = work.changed
    summary.already_cached = len(listing.labels) - len(todo)
    summary.runtime = spec.runtime
    summary.precision = spec.precision
    summary.removed = sum(1 for p in previous.cached if p not in listing.labels)

    if todo:
        if features_fn is None:
            features_fn = bb.ConvBase.from_spec(spec, weights_path, threads=opts.threads)
        made_by = getattr(getattr(features_fn, "spec", None), "runtime", None)
        if isinstance(made_by, str) and made_by != staging.spec.runtime:
            # A conv base handed in by the caller says which runtime really makes the features.
            staging.spec = dataclasses.replace(staging.spec, runtime=made_by)
            summary.runtime = made_by
        seen = set(previous.cached.values()) | previous.part_shas
        t_loop = time.perf_counter()
        try:
            _extract(opts, listing, todo, seen, staging, features_fn, summary)
        finally:
            summary.extract_s = time.perf_counter() - t_loop

    staged, _ = staging.contents()
    changed = (
        any(e.kind != "skip" for e in staged.values())
        or {p for p, e in staged.items() if e.kind == "skip"} != previous.skipped
        or summary.removed > 0
        or previous.class_names != listing.class_names
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


def forward(
    features_fn: FeatureFn, items: Sequence[LoadedFile], spec: FeatureSpec,
    batch_size: int | None = None,
) -> Features:
    """The features of every row of `items` (each image, then its views), in that order, run
    `batch_size` rows at a time (None: all at once) through `pipeline.forward` and checked
    against what a cache of `spec` stores."""

    def checked(pixels: NDArray[np.uint8]) -> Features:
        return as_features(features_fn(pixels), spec, len(pixels))

    try:
        return pipeline.forward(checked, [px for item in items for px in item.rows], spec,
                                batch_size)
    except ValueError as exc:
        raise ExtractError(f"the conv base does not give the features this cache stores: "
                           f"{exc}") from None


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
    views = Views(opts.augment, opts.augment_mode, opts.augment_seed)

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
            queue.append(pool.submit(load_file, listing.root, rel, opts.image_size, views))
            if len(queue) >= window:
                break
        while queue:
            item = queue.popleft().result()
            nxt = next(files, None)
            if nxt is not None:
                queue.append(pool.submit(load_file, listing.root, nxt, opts.image_size, views))
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
