"""Where exported and quantized models are kept, written atomically, found by name.

First that is writable:

1. `$FEATCACHE_HOME/onnx/` when `FEATCACHE_HOME` is set (the only place then);
2. next to the weights file, unless its folder is read-only (as the shared weights folder is);
3. the per-user cache folder platformdirs gives (`~/.cache/featcache/onnx` on Linux, honouring
   `XDG_CACHE_HOME`; `~/Library/Caches/featcache/onnx` on macOS; `%LOCALAPPDATA%` on Windows).

When none is writable a model is kept in memory for this process only. Files are written to a
temporary name and renamed, so concurrent processes never read half a file; names hold
everything the bytes depend on, so a stale file is never reused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from extractor.atomic import atomic_open

logger = logging.getLogger(__name__)

HOME_ENV = "FEATCACHE_HOME"


def user_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("featcache", appauthor=False)) / "onnx"


def candidate_dirs(weights_path: Path) -> list[Path]:
    """Where a model may live, in order of preference (see the module docstring)."""
    home = os.environ.get(HOME_ENV)
    if home:
        return [Path(home).expanduser() / "onnx"]
    return [weights_path.resolve().parent, user_cache_dir()]


def find(weights_path: Path, pattern: str) -> Iterator[Path]:
    """Files matching the glob `pattern` in the candidate folders, in order of preference."""
    for folder in candidate_dirs(weights_path):
        if folder.is_dir():
            yield from sorted(folder.glob(pattern))


def writable_dir(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        mode = folder.stat().st_mode
    except OSError:
        return False
    # os.access says yes to root everywhere; a folder whose owner made it read-only (the shared
    # weights folder) must stay untouched even then.
    return bool(mode & 0o222) and os.access(folder, os.W_OK)


def save_atomic(data: bytes, path: Path) -> None:
    """Write `data` to `path` whole or not at all (`extractor.atomic`, the project's one way)."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def keep(data: bytes, weights_path: Path, name: str, what: str) -> Path | None:
    """Save `data` as `name` in the first writable candidate folder; None when there is none."""
    for folder in candidate_dirs(weights_path):
        if writable_dir(folder):
            path = folder / name
            try:
                save_atomic(data, path)
            except OSError as exc:
                logger.info("cannot keep the %s in %s (%s)", what, folder, exc)
                continue
            logger.info("%s kept at %s", what, path)
            return path
    logger.warning("no writable folder for the %s (tried %s); it is kept in memory for this "
                   "process only", what, ", ".join(map(str, candidate_dirs(weights_path))))
    return None
