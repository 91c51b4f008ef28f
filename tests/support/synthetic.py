"""Synthetic caches: small, separable, with a hand-made spec (no weights, no TensorFlow)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from extractor import FeatureSpec

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
