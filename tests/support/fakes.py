"""A fast stand-in for the conv base, and image folders to extract (tests only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from imagegen import gradient
from PIL import Image

from extractor.features import DEFAULT_POOLED_LAYERS, pool
from extractor.runner import Options
from extractor.vgg16 import feature_shape

SIZE = 64  # block5_pool of a 64x64 input is 2x2x512


def fake_maps(pixels: np.ndarray, layer: str = "block5_pool") -> np.ndarray:
    """Deterministic per-image maps of `layer`'s shape: each image's pixel mean plus a ramp."""
    n = pixels.shape[0]
    shape = feature_shape(layer, pixels.shape[1])
    means = pixels.reshape(n, -1).astype(np.float32).mean(axis=1)
    base = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(1, *shape) / 1000.0
    return base + means[:, None, None, None]


def fake_features(
    pixels: np.ndarray, layer: str = "block5_pool",
    pooled_layers: tuple[str, ...] = DEFAULT_POOLED_LAYERS,
) -> dict[str, np.ndarray]:
    """Named features as the conv base gives them: `layer`'s maps (2x2x512 for block5_pool
    at 64x64) and the avg/max pooled vectors of `pooled_layers`, pooled from fake maps."""
    out = {layer: fake_maps(pixels, layer)}
    for name in pooled_layers:
        maps = out[layer] if name == layer else fake_maps(pixels, name)
        for how in ("avg", "max"):
            out[f"{name}/{how}"] = pool(maps, how)
    return out


class CountingFeatures:
    def __init__(self) -> None:
        self.images = 0

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        self.images += len(pixels)
        return fake_features(pixels)


class DiesOnBatch:
    """Fake features until the `batch`-th call, which raises KeyboardInterrupt: a run stopped
    by Ctrl-C after `batch` - 1 batches (and whatever checkpoints they made)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.calls = 0

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.calls == self.batch:
            raise KeyboardInterrupt
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
