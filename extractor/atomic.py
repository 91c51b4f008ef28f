"""Atomic, durable writes: a file or folder is replaced whole or not at all, and never leaks.

Every writer of the project goes through these (the cache, checkpoints, shards, head artifacts,
prediction files):

- the new version is written under a hidden temporary name in the same folder
  (`.NAME.tmp-PID-XXXXXX`, so a rename can replace the target atomically);
- when complete it is fsynced, renamed over the target, and the folder is fsynced, so the
  rename itself survives a power cut before anything that depends on it (deleting the
  checkpoints a new cache replaces, say) happens;
- on any failure (a full disk, an exception, Ctrl-C) the temporary is removed and the target
  is left as it was.

A `kill -9` can still leave a temporary behind: `remove_stale_temps` clears those of a target
for a caller that knows no one else is writing it (extract holds the output's lock).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import h5py


def temp_path(path: Path, kind: str = "tmp") -> Path:
    """A hidden name beside `path`, unique to this process and call."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(3)}")


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make the entries of `directory` (renames, new files) durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write a file at; on success it replaces `path`, durably."""
    target = Path(path)
    tmp = temp_path(target)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(_parent(target))


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """`open(path, mode)` whose result appears only when the block ends without an error."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike[str]) -> Iterator[h5py.File]:
    """A new HDF5 file (`h5py.File(..., "w")`) that replaces `path` when the block ends."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        yield f


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it takes the place of `path`.

    An existing `path` is refused (`FileExistsError`) unless `overwrite`; then it is moved
    aside, the new folder renamed into place, and the old one deleted. (POSIX has no atomic swap
    of two folders: between the two renames, the old version is at `.NAME.old-*`.)
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists")
    tmp = temp_path(target)
    tmp.mkdir()
    old: Path | None = None
    try:
        yield tmp
        for entry in sorted(tmp.rglob("*")):
            if entry.is_file():
                fsync_file(entry)
        fsync_dir(tmp)
        if target.exists():
            if not overwrite:
                raise FileExistsError(f"{target} already exists")
            old = temp_path(target, "old")
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        if old is not None and not target.exists():
            os.replace(old, target)  # put the previous version back
        raise
    fsync_dir(_parent(target))
    if old is not None:
        _remove(old)


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Delete temporaries a killed writer of `path` left; only when no one else writes it."""
    target = Path(path)
    parent = _parent(target)
    if not parent.is_dir():
        return []
    stale = sorted(parent.glob(f".{target.name}.tmp-*"))
    for p in stale:
        _remove(p)
    return stale
