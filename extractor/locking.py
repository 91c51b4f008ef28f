"""One writer per output: an exclusive lock (`fcntl.flock`) on a hidden file beside it.

Two `extract` runs on one `--out` would number their checkpoints from the same listing and each
fold (then delete) the other's checkpoints, losing files one of them extracted. The second run
is refused instead, with the holder named. `flock` locks die with their process, so a killed
run never leaves a stale lock; the file itself is removed on release.

The lock file is opened without following a symbolic link and used only when it is a plain file
with no other name: a `.OUT.lock` planted as a link to another file (or a hard link to one)
would otherwise have that file truncated and overwritten by the holder's name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path


class Busy(RuntimeError):
    """Another process holds the lock of an output."""

    def __init__(self, target: Path, lock: Path, holder: str) -> None:
        self.target, self.lock, self.holder = target, lock, holder
        super().__init__(f"{target} is being written by another process ({holder or 'unknown'}; "
                         f"lock {lock})")


class UnsafeLock(OSError):
    """The lock's name is taken by something that is not a plain file of its own."""

    def __init__(self, lock: Path, what: str) -> None:
        super().__init__(errno.ELOOP, f"{lock} is {what}, not a lock file: refusing to write "
                                      f"through it; remove it and run again")


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def exclusive(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the lock of `target` for the block; raise `Busy` at once if another process has it."""
    target = Path(target)
    lock = lock_path(target)
    while True:
        fd = _open(lock)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip()
            os.close(fd)
            raise Busy(target, lock, holder) from None
        # A holder removes the file when it lets go: the lock is only ours if the file we
        # locked is still the one under that name.
        try:
            st = os.lstat(lock)
            mine = os.fstat(fd)
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _open(lock: Path) -> int:
    """Open (or create) the lock file itself: never a link's target, never a shared inode."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeLock(lock, "a symbolic link") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise UnsafeLock(lock, "not a plain file" if not stat.S_ISREG(st.st_mode)
                         else "a hard link to another file")
    return fd
