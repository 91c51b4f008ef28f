"""A synthetic image set where the class is a small pattern at a known place (tests only).

Every image is a smooth random background with one 32x32 pattern at a random place: a
checkerboard for class `checker`, concentric rings for class `rings`. Where the pattern lies is
returned with the images, so a heatmap can be checked against it (the "pointing game").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 150
PATTERN = 32
CLASSES = ("checker", "rings")
#: Patterns stay inside the part of the image block5_pool's 4x4 grid covers (128 pixels).
MAX_OFFSET = 128 - PATTERN


def _pattern(kind: str) -> np.ndarray:
    yy, xx = np.mgrid[0:PATTERN, 0:PATTERN]
    if kind == "checker":
        on = ((yy // 7) + (xx // 7)) % 2 == 0
    else:
        r = np.hypot(yy - (PATTERN - 1) / 2, xx - (PATTERN - 1) / 2)
        on = (r // 3.5) % 2 == 0
    return np.where(on, 255, 0).astype(np.uint8)


def _background(rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    noise = rng.normal(0, 1, (SIZE, SIZE, 3))
    smooth = np.stack([ndimage.gaussian_filter(noise[..., c], 12) for c in range(3)], axis=-1)
    smooth = smooth / (np.abs(smooth).max() + 1e-9)
    return np.clip(128 + 60 * smooth + rng.normal(0, 4, smooth.shape), 0, 255)


def make_image(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """One (150, 150, 3) uint8 image of class `kind`, and the pattern's top-left (row, col)."""
    img = _background(rng)
    r, c = (int(v) for v in rng.integers(0, MAX_OFFSET + 1, size=2))
    img[r:r + PATTERN, c:c + PATTERN, :] = _pattern(kind)[..., None]
    return img.round().astype(np.uint8), (r, c)


def write_set(root: Path, per_class: int, seed: int) -> dict[str, tuple[int, int]]:
    """ROOT/CLASS/NNNN.png images; returns each file's path relative to ROOT -> pattern place."""
    rng = np.random.default_rng(seed)
    places = {}
    for kind in CLASSES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img, place = make_image(kind, rng)
            rel = f"{kind}/{i:04d}.png"
            Image.fromarray(img).save(root / rel)
            places[rel] = place
    return places


def hits(grid: np.ndarray, place: tuple[int, int], margin: int = 15) -> bool:
    """Whether the heatmap's peak falls on the pattern, within `margin` pixels (the pointing
    game's usual tolerance)."""
    r, c = np.unravel_index(int(np.argmax(grid)), grid.shape)
    top, left = place
    return (top - margin <= r < top + PATTERN + margin
            and left - margin <= c < left + PATTERN + margin)
