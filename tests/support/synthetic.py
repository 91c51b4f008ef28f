"""Synthetic caches: small, separable, with a hand-made spec (no weights, no TensorFlow)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

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

K = 3  # views per image


def views_cache(path: Path, n_per_class: int = 20, seed: int = 0, mode: str = "dihedral",
                noise: float = 0.1) -> Path:
    X, y = synthetic(n_per_class, 2, seed)
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(len(y)), K + 1)
    feats = X[rows] + rng.normal(0, noise, size=(len(rows), *SHAPE)).astype(np.float32)
    paths = [f"c{y[i]}/{i:04d}.png" for i in rows]
    attrs = {"augment_views": K, "augment_seed": 0, "augment_mode": mode,
             "augmentation": f"{mode}: test views"}
    return write_cache(path, feats, y[rows], paths, make_spec(), class_names=["c0", "c1"],
                       views=np.tile(np.arange(K + 1), len(y)), extra_attrs=attrs)

