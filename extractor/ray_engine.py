"""The Ray engine: the local engine's decode and conv base, spread over a Ray cluster.

Ray Data reads the files' bytes (`read_binary_files`, so one corrupt image cannot fail the job
as `read_images` would) and streams them to a pool of actors. Each actor builds the conv base
once, hashes and decodes its batch and makes its augmented views on the inference path every
engine shares (`pipeline.load_bytes`), runs the model through `runner.forward` (batched by
`pipeline.forward`, checked against the cache's layout) and writes the batch as one
shard (`extractor.cache.shards`), each image's views after it as in a cache. The driver checks every
shard and merges them into the cache through an HDF5 virtual dataset, so readers see one cache
laid out as the local engine lays it out.

Validation (`planner.plan`), the output's lock, change detection (`planner.todo`, over what the
shards recorded), file listing, labels and cache attributes are the local engine's
(`extractor.planner`): the engines differ only in how they spread the work.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import socket
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from extractor import features as named
from extractor.augment import Views
from extractor.cache import rows as cache_rows
from extractor.cache import shards as sh
from extractor.pipeline import FeatureFn, LoadedFile, load_bytes
from extractor.planner import (
    ExtractError,
    Options,
    Summary,
    extra_attrs,
    lock_output,
    plan,
    shard_records,
)
from extractor.planner import (
    todo as todo_files,
)
from extractor.runner import (
    forward,
)
from extractor.spec import FeatureSpec
from extractor.walk import UNKNOWN, FileStat, identity

logger = logging.getLogger(__name__)

INSTALL_HINT = ("--engine ray needs Ray Data, which is not installed: "
                "pip install 'featcache[ray]' (or pip install 'ray[data]>=2.40')")


@dataclasses.dataclass
class RayOptions:
    #: Cluster to join (`ray://host:10001`, `host:6379`, `auto`); None: $RAY_ADDRESS if set,
    #: else a local Ray started for this run.
    address: str | None = None
    #: Model actors; None: one per node.
    actors: int | None = None
    #: Where shards go; None: `<out>.shards/` beside the cache. Must be shared storage on a
    #: cluster: every worker writes there and the driver reads it.
    shards_dir: Path | None = None
    #: Copy the features into the cache file and delete the shards afterwards.
    self_contained: bool = False


def require_ray() -> ModuleType:
    """The `ray` module with Ray Data, or an `ExtractError` saying how to install it."""
    try:
        import ray
        import ray.data  # Ray Data is the part we need; a bare ray install lacks it
    except ImportError:
        raise ExtractError(INSTALL_HINT) from None
    return ray


class ShardWriter:
    """A Ray Data actor: bytes batch -> decoded (and views) -> conv base -> one shard. Returns a
    manifest. `features_fn`: what makes the features instead of the conv base (tests)."""

    def __init__(self, weights: str, spec: dict[str, Any], root: str, out_dir: str,
                 batch_size: int, threads: int, started_ns: int | None = None,
                 augment: dict[str, Any] | None = None,
                 features_fn: FeatureFn | None = None) -> None:
        self.spec = FeatureSpec.from_dict(spec)
        #: As the cache's storage records them (shards are written with them), and as the
        #: inference path makes them: one type.
        self.views = Views.from_attrs(augment or {})
        if features_fn is None:
            from extractor.backbone import ConvBase

            conv = ConvBase.from_spec(self.spec, Path(weights), threads=threads)
            diffs = self.spec.file_differences(conv.spec)
            if diffs:
                raise RuntimeError(f"worker {socket.gethostname()} makes other features than "
                                   f"the driver ({', '.join(diffs)}): give every node the same "
                                   "weights")
            features_fn = conv
        self.features_fn = features_fn
        self.root = root.rstrip("/")
        self.out_dir = Path(out_dir)
        self.batch_size = batch_size
        #: When the job started: a file modified since may have changed after Ray read it, so
        #: its mtime is recorded as unknown (extractor.walk.identity).
        self.started_ns = time.time_ns() if started_ns is None else started_ns

    def _stat(self, rel: str) -> FileStat:
        try:
            return identity(os.stat(os.path.join(self.root, rel)), self.started_ns)
        except OSError:
            return UNKNOWN

    def _rel(self, path: str) -> str:
        if path.startswith(self.root + "/"):
            return path[len(self.root) + 1 :]
        return Path(os.path.relpath(path, self.root)).as_posix()

    def __call__(self, batch: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        size = self.spec.input_size
        items = [load_bytes(self._rel(str(p)), bytes(b), size, self.views)
                 for p, b in zip(batch["path"], batch["bytes"], strict=True)]
        skipped = [(it.path, it.error) for it in items if it.error is not None]
        good = sorted((it for it in items if it.error is None), key=lambda it: it.path)
        start: dict[str, int] = {}  # sha256 -> its first row in `feats`
        unique: list[LoadedFile] = []
        n_rows = 0
        for it in good:
            if it.sha256 not in start:
                start[it.sha256] = n_rows
                unique.append(it)
                n_rows += len(it.rows)
        feats = forward(self.features_fn, unique, self.spec, self.batch_size)
        # Files with the same bytes share one forward pass (each view's), and each gets its
        # own rows.
        index = [start[it.sha256] + v for it in good for v in range(len(it.rows))]
        rows = {name: arr[index] for name, arr in feats.items()}
        stats = {it.path: self._stat(it.path) for it in good}
        shard = sh.write_shard(self.out_dir, self.spec,
                               [it.path for it in good for _ in it.rows],
                               [it.sha256 for it in good for _ in it.rows], rows,
                               [(p, r) for p, r in skipped if r is not None],
                               [stats[it.path] for it in good for _ in it.rows],
                               [v for it in good for v in range(len(it.rows))], self.views)
        return {
            "shard": np.array([str(shard)]),
            "files": np.array([len(items)]),
            "extracted": np.array([len(unique)]),
            "duplicates": np.array([len(good) - len(unique)]),
            "host": np.array([socket.gethostname()]),
        }


def run(opts: Options, ray_opts: RayOptions | None = None,
        features_fn: FeatureFn | None = None) -> Summary:
    """`runner.run` on Ray: extract `opts.directory` into `opts.out`, resuming what is there.

    `features_fn`: shipped to every actor to make the features instead of the conv base (as
    `runner.run`'s, for tests); it must pickle."""
    with lock_output(opts.out):
        return _run(opts, ray_opts or RayOptions(), features_fn)


def _run(opts: Options, ray_opts: RayOptions, features_fn: FeatureFn | None) -> Summary:
    t0 = time.perf_counter()
    listing, spec, weights_path = plan(opts)
    sdir = ray_opts.shards_dir or sh.shards_dir(opts.out)
    summary = Summary(out=opts.out, class_names=listing.class_names, runtime=spec.runtime,
                      precision=spec.precision)
    for name in listing.ignored:
        logger.warning("ignoring %s: files beside class folders belong to no class", name)

    augment = opts.augmentation
    # Under the lock: a shard's temporary file is a killed worker's, never to be finished.
    for stale in sh.remove_stale_temps(sdir):
        logger.info("removed %s, left by an interrupted worker", stale.name)
    prior = sh.load_shards(sdir, spec, augment=augment)
    if opts.out.exists() and cache_rows.is_index(opts.out):
        # A cache a local run appended to: made self-contained, it counts as a shard below.
        cache_rows.compact(opts.out)
    base: sh.Shard | None = None
    if opts.out.exists() and not sh.is_virtual(opts.out):
        # A self-contained cache: its rows count as done.
        base = sh.read_shard(opts.out, spec, augment)
    recorded = shard_records([*([base] if base else []), *prior])
    work = todo_files(listing.root, listing.labels, recorded)
    summary.already_cached = len(listing.labels) - len(work.paths)
    summary.changed = work.changed
    # As the local engine counts it: rows (not skips) of files gone from the folder.
    summary.removed = sum(1 for p, r in recorded.items()
                          if r.sha256 is not None and p not in listing.labels)

    reported: list[Path] = []
    if work.paths:
        t_loop = time.perf_counter()
        try:
            reported = _extract(opts, ray_opts, listing.root, work.paths, spec, weights_path,
                                sdir, summary, features_fn)
        finally:
            summary.extract_s = time.perf_counter() - t_loop

    shards = sh.load_shards(sdir, spec, expected=reported, augment=augment)
    if work.paths and _record_vanished(listing.root, work.paths, shards, reported, sdir, spec,
                                       augment):
        shards = sh.load_shards(sdir, spec, augment=augment)
    if base is not None:
        sdir.mkdir(parents=True, exist_ok=True)
        moved = sdir / f"base-{time.time_ns()}.h5"
        os.replace(opts.out, moved)  # mtime kept: older than every shard, so they win
        shards.insert(0, sh.read_shard(moved, spec, augment))
    extra = {**extra_attrs(opts, weights_path, spec.quantized_sha256), **augment.to_attrs(),
             "engine": "ray"}
    summary.total, summary.skipped = sh.merge(
        opts.out, shards, listing.labels, listing.class_names, spec, extra, work.verified
    )
    if ray_opts.self_contained:
        sh.make_self_contained(opts.out)
        sh.remove_shards(sdir)
    summary.elapsed_s = time.perf_counter() - t0
    return summary


#: CPUs a read task asks for. It only reads files' bytes; asking for a whole CPU would leave a
#: node of 1 CPU, once an actor holds part of it, unable to run any read: the job would hang.
READ_CPUS = 0.25


def _actor_resources(ray: Any, actors: int | None) -> tuple[int, float]:
    """(actors, CPUs each): leave `READ_CPUS` per node to the read tasks, or they never run."""
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")]
    per_node = [float(n["Resources"]["CPU"]) for n in nodes] or [1.0]
    total = sum(per_node)
    n = actors or len(per_node)
    each = (total - READ_CPUS * len(per_node)) / n
    each = min(each, max(per_node) - READ_CPUS)
    return n, max(0.25, math.floor(each * 4) / 4)


def _extract(
    opts: Options,
    ray_opts: RayOptions,
    root: Path,
    todo: list[str],
    spec: FeatureSpec,
    weights_path: Path,
    sdir: Path,
    summary: Summary,
    features_fn: FeatureFn | None = None,
) -> list[Path]:
    from tqdm import tqdm

    ray = require_ray()
    started = False
    if not ray.is_initialized():
        if ray_opts.address is None and not os.environ.get("RAY_ADDRESS"):
            logger.info("no --address or RAY_ADDRESS: starting a local Ray")
        ray.init(address=ray_opts.address, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=opts.progress)
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        # In order, each shard holds one sorted run of paths: one virtual mapping per shard.
        ctx.execution_options.preserve_order = True
        # Our own bar counts files; Ray's bars and per-run INFO lines would interleave with it.
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ctx.enable_progress_bars = False
        n_actors, cpus = _actor_resources(ray, ray_opts.actors)
        logger.info("Ray: %d actor(s) of %.2f CPU each", n_actors, cpus)
        root_s = str(root.resolve())
        sdir.mkdir(parents=True, exist_ok=True)
        ds = ray.data.read_binary_files(
            [f"{root_s}/{p}" for p in todo], include_paths=True, ignore_missing_paths=True,
            num_cpus=READ_CPUS,
        ).map_batches(
            ShardWriter,
            fn_constructor_kwargs=dict(
                weights=str(weights_path), spec=spec.to_dict(), root=root_s,
                out_dir=str(sdir.resolve()), batch_size=opts.batch_size,
                threads=max(1, math.ceil(cpus)), started_ns=time.time_ns(),
                augment=opts.augmentation.to_attrs(), features_fn=features_fn,
            ),
            batch_size=opts.checkpoint_every,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            num_cpus=cpus,
        )
        reported: list[Path] = []
        bar = tqdm(total=len(todo), unit="img", disable=not opts.progress, dynamic_ncols=True)
        with bar:
            try:
                for row in ds.iter_rows():
                    reported.append(Path(str(row["shard"])))
                    summary.extracted += int(row["extracted"])
                    summary.duplicates += int(row["duplicates"])
                    bar.update(int(row["files"]))
            except ray.exceptions.RayError as exc:
                # What Ray retries (lost actors, nodes, objects) it has retried by now; what
                # is left is an error in a batch itself, or a cluster that lost too much.
                raise ExtractError(
                    f"the Ray job failed after {len(reported)} batch(es) ({_gist(exc)}). "
                    f"Their shards are kept in {sdir}: run the same command again to extract "
                    "the rest"
                ) from exc
    finally:
        if started:
            ray.shutdown()
    return reported


def _gist(exc: BaseException) -> str:
    """The error under a Ray error, whose text is a whole remote traceback, in one line: the
    first `SomeError: message` line not raised by Ray itself."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if _ERROR_LINE.match(line) and not line.startswith("ray."):
            return line
    return lines[-1] if lines else type(exc).__name__


_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt): ")


def _record_vanished(
    root: Path, todo: list[str], shards: list[sh.Shard], reported: list[Path], sdir: Path,
    spec: FeatureSpec, augment: Views,
) -> bool:
    """Files gone before they were read become skipped rows; any other gap is an error."""
    mine = {p.resolve() for p in reported}
    seen: set[str] = set()
    for shard in shards:
        if shard.path.resolve() in mine:
            seen.update(shard.paths)
            seen.update(shard.skipped)
    lost = [p for p in todo if p not in seen]
    if not lost:
        return False
    present = [p for p in lost if (root / p).exists()]
    if present:
        raise ExtractError(f"{len(present)} file(s) came back from no worker (first: "
                           f"{present[0]}); run the same command again to extract them")
    sh.write_shard(sdir, spec, [], [], named.empty(spec),
                   [(p, "unreadable file: gone before it was read") for p in lost],
                   augment=augment)
    return True
