"""Folder -> the list of files to extract, with labels, as Keras's image-folder loaders see it;
and a file's identity (size, modification time) to tell later whether it changed."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import NamedTuple


class FileStat(NamedTuple):
    """What a cache records of a file when it reads it: size and mtime in ns (-1: unknown)."""

    size: int
    mtime_ns: int

    @property
    def known(self) -> bool:
        return self.mtime_ns >= 0

    def matches(self, st: os.stat_result) -> bool:
        """The file still looks as recorded (same size and mtime); never when unknown."""
        return self.known and (self.size, self.mtime_ns) == (st.st_size, st.st_mtime_ns)


UNKNOWN = FileStat(-1, -1)
#: A file modified less than this before it was read could be modified again within the same
#: timestamp tick (coarse kernel clocks; 2 s on FAT, 1 s on some NFS servers) and keep its mtime:
#: its mtime is recorded as unknown, so the next run hashes it instead of trusting it ("racy
#: git" has the same rule).
RACY_NS = 2_000_000_000


def identity(st: os.stat_result, read_at_ns: int) -> FileStat:
    """The FileStat to record for a file read (or hashed) from `read_at_ns` on (time.time_ns)."""
    if st.st_mtime_ns >= read_at_ns - RACY_NS:
        return FileStat(st.st_size, -1)
    return FileStat(st.st_size, st.st_mtime_ns)


@dataclasses.dataclass(frozen=True)
class Listing:
    root: Path
    #: Sorted class sub-folder names; empty for a flat (unlabelled) folder.
    class_names: list[str]
    #: (path relative to root, POSIX separators) -> label index, -1 when unlabelled.
    labels: dict[str, int]
    #: Files beside the class sub-folders, which belong to no class and are left out.
    ignored: list[str]


def _hidden(name: str) -> bool:
    return name.startswith(".")


def scan(root: str | os.PathLike[str]) -> Listing:
    """List every non-hidden file under `root`.

    With sub-folders, each one is a class (sorted by name, as
    `keras.utils.image_dataset_from_directory` orders them) and its files, at any depth, are
    that class's images. Without sub-folders, the folder's files form an unlabelled set.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"--dir must be a folder of images; {root} is not a folder")
    entries = sorted(root.iterdir(), key=lambda p: p.name)
    class_dirs = [p for p in entries if p.is_dir() and not _hidden(p.name)]
    top_files = [p.name for p in entries if p.is_file() and not _hidden(p.name)]
    if not class_dirs:
        return Listing(root, [], {name: -1 for name in top_files}, [])
    labels: dict[str, int] = {}
    for label, class_dir in enumerate(class_dirs):
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            for name in sorted(filenames):
                if not _hidden(name):
                    labels[f"{rel_dir}/{name}"] = label
    return Listing(root, [d.name for d in class_dirs], dict(sorted(labels.items())), top_files)
