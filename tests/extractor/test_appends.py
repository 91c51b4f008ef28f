"""A cache that grows (issue 19): a run that adds files writes their rows to a new row file and
rewrites only the small index; old rows stay on disk byte for byte; deleted rows vanish at
once; kill -9 at any point of an append leaves a readable cache and a re-run completes it;
compaction (asked for, or past the dead-row share) equals a fresh extraction."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from fakes import fake_features, make_folder, opts
from imagegen import gradient
from PIL import Image

from extractor import open_cache
from extractor.cache import parts_dir, write_cache
from extractor.cache import rows as cache_rows
from extractor.cache.rows import disk_bytes, rows_dir
from extractor.runner import run
from featcache import cli

SUPPORT = Path(__file__).resolve().parents[1] / "support"
REPO = Path(__file__).resolve().parents[2]


def _add(folder: Path, cls: str, names: range, seed: int = 5000) -> None:
    for i in names:
        Image.fromarray(gradient(80, 60, seed=seed + i)).save(folder / cls / f"new{i:04d}.png")
    _age(folder)


def _age(folder: Path) -> None:
    """Files an hour old: their mtimes are recorded as they are (not as unknown, the rule for
    files modified just before they were read), whenever a run reads them."""
    old = time.time_ns() - 3600 * 10**9
    for p in folder.rglob("*.png"):
        os.utime(p, ns=(old, old))


def _folder(tmp_path: Path, per_class: int) -> Path:
    folder = make_folder(tmp_path / "imgs", per_class=per_class)
    _age(folder)
    return folder


def _content(path: Path) -> dict[tuple[str, int], tuple[object, ...]]:
    """Everything a cache says about each (path, view), whatever the row order."""
    with open_cache(path) as c:
        names = c.spec.stored_names()
        feats = c.read_named(names)
        stats = c.file_stats or []
        out = {}
        for i, (p, v) in enumerate(zip(c.paths, c.views.tolist(), strict=True)):
            out[(p, v)] = (c.sha256[i], int(c.labels[i]), tuple(stats[i]) if stats else None,
                           *(feats[n][i].tobytes() for n in names))
        assert len(out) == len(c), "a (path, view) appears twice"
        out[("skipped", -1)] = tuple(c.skipped)
        out[("classes", -1)] = tuple(c.class_names)
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fresh(folder: Path, tmp_path: Path, name: str = "fresh.h5") -> Path:
    out = tmp_path / name
    run(opts(folder, out), features_fn=fake_features)
    return out


def test_appends_leave_old_rows_untouched_and_equal_a_fresh_extraction(tmp_path: Path) -> None:
    folder = _folder(tmp_path, per_class=6)
    out = tmp_path / "f.h5"
    run(opts(folder, out), features_fn=fake_features)
    first = _digest(out)
    assert not rows_dir(out).exists()  # a first extraction is one self-contained file

    _add(folder, "cat", range(3))
    summary = run(opts(folder, out), features_fn=fake_features)
    assert summary.extracted == 3 and summary.total == 15
    files = sorted(p.name for p in rows_dir(out).iterdir())
    assert files == ["rows-000000.h5", "rows-000001.h5"]
    # The previous cache file became the first row file as it was: not one byte rewritten.
    assert _digest(rows_dir(out) / "rows-000000.h5") == first
    with h5py.File(out, "r") as f:
        assert f["features"].is_virtual and f["pooled/block3_pool/avg"].is_virtual
        assert f["features"].shape[0] == 15
    before = {p.name: _digest(p) for p in rows_dir(out).iterdir()}

    _add(folder, "dog", range(10, 12))
    run(opts(folder, out), features_fn=fake_features)
    after = {p.name: _digest(p) for p in rows_dir(out).iterdir()}
    assert {k: after[k] for k in before} == before  # existing row files: same bytes on disk
    assert len(after) == 3
    assert _content(out) == _content(_fresh(folder, tmp_path))
    with open_cache(out) as c:  # an image's views and rows stay together; ids group by path
        assert len(set(c.image_ids.tolist())) == 17


def test_deleted_and_changed_rows_vanish_at_once_and_compaction_equals_fresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _folder(tmp_path, per_class=10)
    out = tmp_path / "f.h5"
    run(opts(folder, out), features_fn=fake_features)
    _add(folder, "cat", range(4))
    run(opts(folder, out), features_fn=fake_features)

    (folder / "dog" / "dog003.png").unlink()
    Image.fromarray(gradient(80, 60, seed=777)).save(folder / "cat" / "cat001.png")
    os.utime(folder / "cat" / "cat001.png", ns=(10**18, 10**18))
    summary = run(opts(folder, out), features_fn=fake_features)
    assert summary.extracted == 1 and summary.changed == {"cat/cat001.png"}
    with open_cache(out) as c:
        assert "dog/dog003.png" not in c.paths and len(c) == 23
    # Their old rows are dead: still on disk (2 of 25), not in the cache.
    stored = sum(h5py.File(p, "r")["features"].shape[0] for p in rows_dir(out).iterdir())
    assert stored == 25
    fresh = _fresh(folder, tmp_path)
    assert _content(out) == _content(fresh)

    before = disk_bytes(out)
    assert cli.main(["compact", str(out), "--json"]) == 0
    assert '"dead_rows": 2' in capsys.readouterr().out
    assert not rows_dir(out).exists() and disk_bytes(out) < before
    with h5py.File(out, "r") as f, h5py.File(fresh, "r") as g:
        assert not f["features"].is_virtual
        for name in ("paths", "sha256", "labels", "view", "file_size", "file_mtime_ns",
                     "features", "pooled/block4_pool/max", "skipped/paths"):
            np.testing.assert_array_equal(f[name][:], g[name][:], err_msg=name)  # row for row


def test_dead_rows_past_the_share_are_compacted_automatically(tmp_path: Path) -> None:
    folder = _folder(tmp_path, per_class=10)
    out = tmp_path / "f.h5"
    run(opts(folder, out), features_fn=fake_features)
    _add(folder, "cat", range(2))
    run(opts(folder, out), features_fn=fake_features)
    for i in range(3):  # 3 dead of 22 on disk: under 25%, kept
        (folder / "dog" / f"dog00{i}.png").unlink()
    _add(folder, "dog", range(20, 21))
    run(opts(folder, out), features_fn=fake_features)
    assert len(list(rows_dir(out).glob("rows-*.h5"))) == 3
    for i in range(3, 8):  # 8 dead of 23: the file holding them is rewritten
        (folder / "dog" / f"dog00{i}.png").unlink()
    _add(folder, "dog", range(30, 31))
    run(opts(folder, out), features_fn=fake_features)
    names = sorted(p.name for p in rows_dir(out).iterdir())
    assert "rows-000000.h5" not in names  # the first file, with every dead row, is gone
    stored = sum(h5py.File(rows_dir(out) / n, "r")["features"].shape[0] for n in names)
    with open_cache(out) as c:
        assert stored == len(c) == 16
    assert _content(out) == _content(_fresh(folder, tmp_path))


def test_an_old_format_cache_opens_and_is_upgraded_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _folder(tmp_path, per_class=4)
    reference = _fresh(folder, tmp_path, "ref.h5")
    with open_cache(reference) as c:  # a self-contained cache as the previous version wrote it
        spec, names = c.spec, c.spec.stored_names()
        feats, labels, paths, shas = c.read_named(names), c.labels, c.paths, c.sha256
        stats = c.file_stats
    out = write_cache(tmp_path / "old.h5", feats, labels, paths, spec, ["cat", "dog"], shas,
                      file_stats=stats, extra_attrs={"source_dir": str(folder)})
    with h5py.File(out, "r") as f:
        assert "row_files" not in f.attrs and not f["features"].is_virtual
    with open_cache(out) as c:
        assert c.paths == paths
    old = _digest(out)

    _add(folder, "dog", range(2))
    with caplog.at_level(logging.WARNING, logger="extractor.cache.rows"):
        run(opts(folder, out), features_fn=fake_features)
    upgraded = [r for r in caplog.records if "upgrading" in r.getMessage()]
    assert len(upgraded) == 1 and "once" in upgraded[0].getMessage()
    assert _digest(rows_dir(out) / "rows-000000.h5") == old
    caplog.clear()
    _add(folder, "dog", range(5, 6))
    with caplog.at_level(logging.WARNING, logger="extractor.cache.rows"):
        run(opts(folder, out), features_fn=fake_features)
    assert not [r for r in caplog.records if "upgrading" in r.getMessage()]
    assert _content(out) == _content(_fresh(folder, tmp_path))


def test_an_append_writes_a_small_share_of_the_cache(tmp_path: Path) -> None:
    """10 new images on a 1,000-file cache: bytes the process writes (its write() calls,
    /proc/self/io wchar) stay under 10% of the cache's size on disk."""
    folder = _folder(tmp_path, per_class=20)
    for cls in ("cat", "dog"):  # files with equal bytes: one forward pass, a row each
        for i in range(480):
            os.link(folder / cls / f"{cls}{i % 20:03d}.png",
                    folder / cls / f"{cls}{i + 20:03d}.png")
    out = tmp_path / "f.h5"
    run(opts(folder, out), features_fn=fake_features)
    _add(folder, "cat", range(10))

    def written() -> int:
        io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
        return int(io["wchar"])

    start = written()
    run(opts(folder, out), features_fn=fake_features)
    cost = written() - start
    size = disk_bytes(out)
    assert cost < 0.10 * size, f"an append of 10 images wrote {cost} bytes; cache {size}"
    assert _content(out) == _content(_fresh(folder, tmp_path))


CHILD = """
import os, signal, sys
from pathlib import Path
from fakes import fake_features, opts
from extractor.cache import rows as cache_rows
from extractor.cache import writer
from extractor.runner import run

point = sys.argv[3]

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def after(module, name):
    real = getattr(module, name)
    def wrapped(*args, **kwargs):
        result = real(*args, **kwargs)
        die()
        return result
    setattr(module, name, wrapped)

if point == "adopt":
    after(cache_rows, "_adopt")  # the old cache linked as a row file, nothing else yet
elif point == "row-file-write":
    calls = []
    real_copy = writer.copy_rows
    def copy(*args, **kwargs):
        real_copy(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            die()  # half-way through writing the new row file
    writer.copy_rows = copy
elif point == "row-file-done":
    after(cache_rows, "_rows_in")  # the row file complete, the index not written
elif point == "index-done":
    cache_rows.remove_unused = die  # the index committed; checkpoints and files not cleared
run(opts(Path(sys.argv[1]), Path(sys.argv[2]), checkpoint_every=3), features_fn=fake_features)
"""


@pytest.mark.parametrize("point", ["adopt", "row-file-write", "row-file-done", "index-done"])
def test_kill_9_during_an_append(tmp_path: Path, point: str) -> None:
    folder = _folder(tmp_path, per_class=5)
    out = tmp_path / "f.h5"
    run(opts(folder, out), features_fn=fake_features)
    if point != "adopt":  # an append on an append
        _add(folder, "cat", range(2))
        run(opts(folder, out), features_fn=fake_features)
    before = _content(out)
    _add(folder, "dog", range(10, 17))
    (folder / "cat" / "cat002.png").unlink()

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)])}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), str(folder), str(out),
                           point], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]

    # The cache is readable: the previous one, or (killed after the commit) the new one.
    fresh = _content(_fresh(folder, tmp_path))
    assert _content(out) in (before, fresh)
    run(opts(folder, out), features_fn=fake_features)
    assert _content(out) == fresh
    assert not parts_dir(out).exists()
    with h5py.File(out, "r") as f:
        used = {Path(n).name for n in cache_rows.row_files(f)}
    on_disk = {p.name for p in rows_dir(out).iterdir()} if rows_dir(out).exists() else set()
    assert on_disk == used  # what the killed run left behind is gone
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".f.h5.tmp")]


def test_a_cache_without_its_row_files_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path, per_class=3)
    out = tmp_path / "f.h5"
    run(opts(folder, out), features_fn=fake_features)
    _add(folder, "cat", range(1))
    run(opts(folder, out), features_fn=fake_features)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(out, moved / out.name)  # the index alone, without f.h5.rows/
    from extractor.cache import CacheError

    with pytest.raises(CacheError, match=r"f.h5.rows"):
        open_cache(moved / out.name)


def test_an_appended_cache_reads_in_xarray_with_named_dimensions(tmp_path: Path) -> None:
    import xarray as xr

    folder = _folder(tmp_path, per_class=3)
    out = tmp_path / "f.h5"
    run(opts(folder, out), features_fn=fake_features)
    _add(folder, "dog", range(2))
    run(opts(folder, out), features_fn=fake_features)
    with xr.open_dataset(out, engine="h5netcdf", phony_dims="access") as ds:
        assert ds["features"].dims == ("row", "height", "width", "channel")
        for name in ("paths", "labels", "view", "row_file", "row_index"):
            assert ds[name].dims == ("row",), name
        assert not any(d.startswith("phony") for d in ds.dims)
        features = ds["features"].values
    with xr.open_dataset(out, engine="h5netcdf", group="pooled/block5_pool",
                         phony_dims="access") as g:
        assert g["avg"].dims == ("row", "block5_pool_channel")
    with open_cache(out) as c:
        np.testing.assert_array_equal(features, c.read()[0])
        assert len(c) == 8 and not np.isnan(features).any()


def test_compact_is_refused_while_an_extract_holds_the_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from extractor import locking

    folder = _folder(tmp_path, per_class=2)
    out = tmp_path / "f.h5"
    run(opts(folder, out), features_fn=fake_features)
    _add(folder, "cat", range(1))
    run(opts(folder, out), features_fn=fake_features)
    before = {p.name: _digest(p) for p in [out, *rows_dir(out).iterdir()]}
    with locking.exclusive(out):
        assert cli.main(["compact", str(out)]) == 1
    assert "being written by another extract" in capsys.readouterr().err
    assert {p.name: _digest(p) for p in [out, *rows_dir(out).iterdir()]} == before
    assert cli.main(["compact", str(tmp_path / "missing.h5")]) == 1
    assert "no such cache file" in capsys.readouterr().err
