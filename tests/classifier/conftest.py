"""Synthetic caches: small, separable, with a hand-made spec (no weights, no TensorFlow)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from extractor import FeatureSpec, write_cache

SHAPE = (2, 2, 8)


def make_spec(**changes: object) -> FeatureSpec:
    fields: dict[str, object] = dict(
        backbone="vgg16", weights_sha256="x" * 64, layer="block5_pool", input_size=150,
        preprocessing="p", feature_shape=SHAPE,
    )
    fields.update(changes)
    return FeatureSpec(**fields)  # type: ignore[arg-type]


def synthetic(n_per_class: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Post-ReLU-like maps where class c lights up channel c (plus noise): separable."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = rng.gamma(1.0, 0.5, size=(len(y), *SHAPE)).astype(np.float32)
    X[np.arange(len(y)), :, :, y] += 3.0
    return X, y


MakeCache = Callable[..., Path]


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
