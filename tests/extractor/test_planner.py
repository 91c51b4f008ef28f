"""The planner's change detection, shared by both engines (issue 17, item 3): what earlier runs
recorded (a cache and its checkpoints, or shards) against the folder as it is now."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
from fakes import fake_features, make_folder, opts

from extractor import FeatureSpec
from extractor.cache import Staging
from extractor.cache import shards as sh
from extractor.planner import Recorded, cache_records, plan, shard_records, todo
from extractor.runner import run
from extractor.walk import UNKNOWN, FileStat, identity

SECOND = 1_000_000_000
SPEC = FeatureSpec(backbone="vgg16", weights_sha256="x" * 64, layer="block5_pool",
                   input_size=150, preprocessing="p", feature_shape=(2, 2, 3))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stat(path: Path) -> FileStat:
    st = path.stat()
    return FileStat(st.st_size, st.st_mtime_ns)


def test_todo_sorts_new_unchanged_touched_and_changed_files(tmp_path: Path) -> None:
    now = time.time_ns()
    for name in ("same", "touched", "changed", "new", "broken"):
        (tmp_path / name).write_bytes(name.encode())
        os.utime(tmp_path / name, ns=(now - 100 * SECOND, now - 100 * SECOND))
    recorded = {p: Recorded(_sha(tmp_path / p), _stat(tmp_path / p))
                for p in ("same", "touched", "changed")}
    recorded["broken"] = Recorded(None, UNKNOWN, since_ns=os.stat(tmp_path / "broken")
                                  .st_mtime_ns + 1)  # skipped after its last change
    later = now - 10 * SECOND  # in the past: a future mtime is recorded as unknown
    os.utime(tmp_path / "touched", ns=(later, later))  # same bytes, new mtime
    (tmp_path / "changed").write_bytes(b"other bytes")
    os.utime(tmp_path / "changed", ns=(later, later))

    work = todo(tmp_path, ["same", "touched", "changed", "new", "broken"], recorded)
    assert work.paths == ["changed", "new"]
    assert work.changed == {"changed"}
    # Hashed and found equal: its fresh stat is recorded, so the next run needs no hashing.
    assert work.verified["touched"].mtime_ns == later
    assert "same" not in work.verified


def test_a_skipped_file_is_tried_again_once_it_changes(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not an image")
    since = os.stat(tmp_path / "bad.png").st_mtime_ns  # recorded no later than the change
    work = todo(tmp_path, ["bad.png"], {"bad.png": Recorded(None, UNKNOWN, since)})
    assert work.paths == ["bad.png"] and work.changed == set()  # a skip is not "changed"


def test_shard_records_resolve_as_merge_does(tmp_path: Path) -> None:
    """A row beats a skip, the newest shard's rows win; a shard's skip is trusted while the file
    is older than the shard."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    now = time.time_ns()
    for name in ("a", "b"):
        (folder / name).write_bytes(name.encode())
        os.utime(folder / name, ns=(now - 100 * SECOND, now - 100 * SECOND))
    sdir = tmp_path / "shards"
    old = sh.write_shard(sdir, SPEC, [], [], np.zeros((0, *SPEC.feature_shape), np.float32),
                         [("a", "broken"), ("b", "broken")])
    os.utime(old, ns=(now - 50 * SECOND, now - 50 * SECOND))
    sh.write_shard(sdir, SPEC, ["a"], [_sha(folder / "a")],
                   np.ones((1, *SPEC.feature_shape), np.float32), [],
                   [identity(os.stat(folder / "a"), now)])
    recorded = shard_records(sh.load_shards(sdir, SPEC))
    assert recorded["a"].sha256 == _sha(folder / "a")  # the newer row, not the older skip
    assert recorded["b"] == Recorded(None, UNKNOWN, now - 50 * SECOND)
    assert todo(folder, ["a", "b"], recorded).paths == []
    (folder / "b").write_bytes(b"fixed")  # changed after the shard that skipped it
    assert todo(folder, ["a", "b"], recorded).paths == ["b"]


def test_cache_records_let_checkpoints_replace_the_caches_rows(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=2)
    out = tmp_path / "f.h5"
    run(opts(folder, out), features_fn=fake_features)
    _, spec, _ = plan(opts(folder, out))
    rec = cache_records(out, Staging(out, spec))
    assert set(rec.recorded) == set(rec.cached) and len(rec.cached) == 4
    assert rec.class_names == ["cat", "dog"] and rec.part_shas == set()
    assert todo(folder, sorted(rec.cached), rec.recorded).paths == []
