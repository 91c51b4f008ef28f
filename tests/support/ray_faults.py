"""Features functions that fail on cue inside Ray actors (the Ray engine's fault tests).

Ray pickles them to the actors by value (`ship`), so a worker needs no tests folder. Each
claims its fault once across the whole cluster by creating a marker file (O_EXCL): the retry
that Ray or a re-run makes of the same batch then runs normally.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from fakes import fake_features


def ship() -> None:
    """Let Ray's cloudpickle send these and the fakes by value."""
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cloudpickle.register_pickle_by_value(sys.modules["fakes"])


def _claim(marker: Path, text: str) -> bool:
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return True


class StallsOnWorkerNode:
    """Fake features; the first batch run on a node other than `head_node` writes that node's
    id to `marker`, then stalls `stall_s` (the test removes the node meanwhile)."""

    def __init__(self, marker: Path, head_node: str, stall_s: float = 60.0) -> None:
        self.marker, self.head_node, self.stall_s = marker, head_node, stall_s

    def __call__(self, pixels: np.ndarray) -> dict[str, Any]:
        import ray

        node = ray.get_runtime_context().get_node_id()
        if node != self.head_node and _claim(self.marker, node):
            time.sleep(self.stall_s)
        return fake_features(pixels)


class RaisesOnce:
    """Fake features; the first batch anywhere raises (the marker says one did)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __call__(self, pixels: np.ndarray) -> dict[str, Any]:
        if _claim(self.marker, str(len(pixels))):
            raise RuntimeError("injected fault: this batch fails")
        return fake_features(pixels)
