"""The `make_cache` fixture: synthetic caches written to the test's tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic import MakeCache, make_spec, synthetic

from extractor import FeatureSpec, write_cache


@pytest.fixture
def make_cache(tmp_path: Path) -> MakeCache:
    def make(
        name: str = "train.h5",
        n_per_class: int = 30,
        n_classes: int = 2,
        seed: int = 0,
        spec: FeatureSpec | None = None,
        class_names: list[str] | None = None,
        labels: np.ndarray | None = None,
    ) -> Path:
        X, y = synthetic(n_per_class, n_classes, seed)
        if labels is not None:
            y = labels
        names = class_names if class_names is not None else [f"c{i}" for i in range(n_classes)]
        return write_cache(
            tmp_path / name, X, y, [f"{i:04d}.png" for i in range(len(y))],
            spec or make_spec(), class_names=names,
        )

    return make
