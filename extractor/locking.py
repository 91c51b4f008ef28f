"""One writer per output: an exclusive lock (`fcntl.flock`) on a hidden file beside it.

Two `extract` runs on one `--out` would number their checkpoints from the same listing and each
fold (then delete) the other's checkpoints, losing files one of them extracted. The second run
is refused instead, with the holder named. `flock` locks die with their process, so a killed
run never leaves a stale lock; the file itself is removed on release.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path


class Busy(RuntimeError):
    """Another process holds the lock of an output."""

    def __init__(self, target: Path, lock: Path, holder: str) -> None:
        self.target, self.lock, self.holder = target, lock, holder
        super().__init__(f"{target} is being written by another process ({holder or 'unknown'}; "
                         f"lock {lock})")


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def exclusive(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the lock of `target` for the block; raise `Busy` at once if another process has it."""
    target = Path(target)
    lock = lock_path(target)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip()
            os.close(fd)
            raise Busy(target, lock, holder) from None
        # A holder removes the file when it lets go: the lock is only ours if the file we
        # locked is still the one under that name.
        try:
            st = os.stat(lock)
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
