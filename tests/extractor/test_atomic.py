"""Failure leftovers (issue 11, item 10): a failed write leaves no temporary file behind, and a
cache's rename is durable (its folder fsynced) before the checkpoints it replaces are deleted."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from fakes import fake_features, make_folder, opts

from extractor import open_cache
from extractor.cache import parts_dir, writer
from extractor.runner import run


def _disk_full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_during_consolidation_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=3)
    out = tmp_path / "f.h5"
    run(opts(folder, out), features_fn=fake_features)
    before = out.read_bytes()
    make_folder(folder, per_class=2, classes=("bird",))

    monkeypatch.setattr(writer, "copy_rows", _disk_full)
    with pytest.raises(OSError, match="No space left"):
        run(opts(folder, out), features_fn=fake_features)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], f"a failed write left {leftovers} behind"
    assert out.read_bytes() == before  # the previous cache is untouched
    assert list(parts_dir(out).glob("part-*.h5"))  # the new work is kept for the next run

    monkeypatch.undo()
    summary = run(opts(folder, out), features_fn=fake_features)
    assert summary.extracted == 0 and summary.total == 8  # resumed from the checkpoints


def test_the_cache_rename_is_durable_before_checkpoints_are_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_folder(tmp_path / "imgs", per_class=3)
    out = tmp_path / "f.h5"
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_unlink = os.fsync, os.replace, os.unlink

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            events.append(("fsync-dir", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    def unlink(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        events.append(("unlink", str(path)))
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    run(opts(folder, out, checkpoint_every=2), features_fn=fake_features)
    monkeypatch.undo()

    committed = events.index(("replace", str(out)))
    first_part_deleted = next(i for i, (kind, p) in enumerate(events)
                              if kind == "unlink" and Path(p).parent == parts_dir(out))
    assert committed < first_part_deleted
    assert ("fsync-dir", str(tmp_path)) in events[committed:first_part_deleted], (
        "checkpoints were deleted before the cache's rename was made durable")
    with open_cache(out) as cache:
        assert len(cache) == 6


def test_failed_prediction_file_leaves_no_temporary_file(tmp_path: Path) -> None:
    from classifier.predict import Prediction, write_predictions

    def predictions():  # type: ignore[no-untyped-def]
        yield Prediction("a.png", "cat", [0.9, 0.1])
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "preds.csv"
    with pytest.raises(OSError, match="No space left"):
        write_predictions(predictions(), ["cat", "dog"], out)
    assert list(tmp_path.iterdir()) == []


def test_atomic_helpers(tmp_path: Path) -> None:
    from extractor import atomic

    target = tmp_path / "x.txt"
    with atomic.atomic_open(target) as fh:
        fh.write("one")
    assert target.read_text() == "one"
    with pytest.raises(RuntimeError), atomic.atomic_open(target) as fh:
        fh.write("two")
        raise RuntimeError("boom")
    assert target.read_text() == "one" and sorted(tmp_path.iterdir()) == [target]

    with atomic.atomic_h5(tmp_path / "d.h5") as f:
        f["x"] = np.arange(3)
    assert (tmp_path / "d.h5").is_file()

    folder = tmp_path / "artifact"
    with atomic.atomic_dir(folder) as tmp:
        (tmp / "a").write_text("first")
    with pytest.raises(FileExistsError), atomic.atomic_dir(folder) as tmp:
        pass
    with pytest.raises(RuntimeError), atomic.atomic_dir(folder, overwrite=True) as tmp:
        (tmp / "a").write_text("second")
        raise RuntimeError("boom")
    assert (folder / "a").read_text() == "first"
    with atomic.atomic_dir(folder, overwrite=True) as tmp:
        (tmp / "b").write_text("second")
    assert sorted(p.name for p in folder.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact", "d.h5", "x.txt"]


def test_these_tests_pass_without_settings_from_the_shell() -> None:
    """The tests above call `monkeypatch.undo()`; that must not take away the weights the test
    fixtures give them, so they pass under a plain `pytest` with no FEATCACHE_WEIGHTS set."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FEATCACHE_") or k == "FEATCACHE_SHARED"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not shell",
         str(Path(__file__).relative_to(root))],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "4 passed" in result.stdout
