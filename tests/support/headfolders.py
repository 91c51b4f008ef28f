"""Head folders moved around as a deploy would: copied beside, renamed in; or damaged."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def install(src: Path, dest: Path) -> Path:
    """Copy a head folder beside its destination, then rename it in: what a deploy should do."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.incoming"
    shutil.copytree(src, tmp)
    os.replace(tmp, dest)
    return dest


def model_file(folder: Path) -> Path:
    return folder / json.loads((folder / "metadata.json").read_text())["model_file"]


def edit_metadata(folder: Path, **changes: object) -> None:
    """Change top-level metadata keys; a dict value updates that key's dict."""
    meta = json.loads((folder / "metadata.json").read_text())
    for key, value in changes.items():
        meta[key] = {**meta[key], **value} if isinstance(value, dict) else value
    (folder / "metadata.json").write_text(json.dumps(meta))
