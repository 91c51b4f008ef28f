"""Where exported and quantized models are kept, written atomically, found by name.

featcache's own folder, never beside the weights file (whoever could write that folder, or
root, which can write any, would change the features while the spec looks the same):

1. `$FEATCACHE_HOME/onnx/` when `FEATCACHE_HOME` is set (the flag that puts them elsewhere: a
   Docker volume, a folder shared by a team);
2. else the per-user cache folder platformdirs gives (`~/.cache/featcache/onnx` on Linux,
   honouring `XDG_CACHE_HOME`; `~/Library/Caches/featcache/onnx` on macOS; `%LOCALAPPDATA%`
   on Windows).

A folder featcache creates is private (0700). Files in a folder anyone may write are never
used. What is found is still checked before use against what it must be (the fp32 export by
`onnx_export.verify`, an int8 model by its hash and recipe: `int8._verified`). When the folder
is not writable a model is kept in memory for this process only. Files are written to a
temporary name and renamed, so concurrent processes never read half a file.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from extractor.atomic import atomic_open

logger = logging.getLogger(__name__)

HOME_ENV = "FEATCACHE_HOME"


def user_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("featcache", appauthor=False)) / "onnx"


def candidate_dirs(weights_path: Path) -> list[Path]:
    """Where a model may live (see the module docstring); never the weights file's folder,
    whatever `weights_path` is."""
    home = os.environ.get(HOME_ENV)
    if home:
        return [Path(home).expanduser() / "onnx"]
    return [user_cache_dir()]


def find(weights_path: Path, pattern: str) -> Iterator[Path]:
    """Regular files matching the glob `pattern` in the candidate folders, in order of
    preference; a folder that anyone may write is passed over."""
    for folder in candidate_dirs(weights_path):
        if not folder.is_dir():
            continue
        if folder.stat().st_mode & stat.S_IWOTH:
            logger.warning("ignoring the models in %s: anyone may write that folder", folder)
            continue
        yield from sorted(p for p in folder.glob(pattern) if p.is_file())


def writable_dir(folder: Path) -> bool:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = folder.stat().st_mode
    except OSError:
        return False
    # os.access says yes to root everywhere; a folder whose owner made it read-only must stay
    # untouched even then.
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
