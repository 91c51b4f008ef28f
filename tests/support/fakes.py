"""A fast stand-in for the conv base, and image folders to extract (tests only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from imagegen import gradient
from PIL import Image

from extractor.runner import Options

SIZE = 64  # block5_pool of a 64x64 input is 2x2x512


def fake_features(pixels: np.ndarray) -> np.ndarray:
    """Deterministic per-image features (2, 2, 512) derived from the pixels."""
    n = pixels.shape[0]
    means = pixels.reshape(n, -1).astype(np.float32).mean(axis=1)
    base = np.arange(2 * 2 * 512, dtype=np.float32).reshape(1, 2, 2, 512) / 1000.0
    return base + means[:, None, None, None]


class CountingFeatures:
    def __init__(self) -> None:
        self.images = 0

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.images += len(pixels)
        return fake_features(pixels)


def make_folder(root: Path, per_class: int = 5, classes: tuple[str, ...] = ("cat", "dog")) -> Path:
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = gradient(80, 60, seed=100 * c + i)
            Image.fromarray(arr).save(root / cls / f"{cls}{i:03d}.png")
    return root


def opts(directory: Path, out: Path, **kw: object) -> Options:
    return Options(directory=directory, out=out, image_size=SIZE, progress=False,
                   **kw)  # type: ignore[arg-type]
