"""Calibration images for int8 quantization.

Default (`photos`): 64 crops of the two photographs scikit-learn ships
(`sklearn/datasets/images/china.jpg` and `flower.jpg`, the images of
`sklearn.datasets.load_sample_images`), at five scales, a third of them in grey, resized as
`extract` resizes. scikit-learn is already a dependency (and serving a head needs it), so every
machine has the same images: `extract` of a training folder, `extract` of a validation folder
and `serve` elsewhere all build the same int8 model without passing files around. Measured
against folder-independent alternatives on ELPV (BENCHMARKS.md, "int8"): seeded procedural
textures gave ranges 2-3x wider than real images and a worst-image cosine of 0.989 to fp32;
these photos 0.99+.

`from_folder(DIR)` (`extract --calibration DIR`): up to 64 images of a folder, evenly spaced in
its sorted listing, decoded as `extract` decodes them: slightly closer to that folder's features,
at the price of a model the folder alone defines (see README, "int8").

Both are deterministic: the same bytes for the same inputs, Pillow and its JPEG decoder; their
SHA-256 enters the int8 model's recipe key, so a change shows up as another model, never as
silently different features.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

CALIBRATION_ID = "sklearn-photos-v1"
COUNT = 64
PHOTOS = ("china.jpg", "flower.jpg")
#: (crop side in pixels, crops across, crops down) per photo (427 x 640): 32 crops each.
_CROPS = ((427, 4, 1), (320, 4, 2), (240, 4, 2), (180, 4, 2), (128, 4, 1))


def _positions(length: int, side: int, count: int) -> list[int]:
    if count == 1:
        return [(length - side) // 2]
    return [(length - side) * i // (count - 1) for i in range(count)]


def photos(size: int) -> NDArray[np.uint8]:
    """The default calibration set: (64, size, size, 3) uint8."""
    import sklearn
    from PIL import Image

    folder = Path(sklearn.__file__).parent / "datasets" / "images"
    out: list[NDArray[np.uint8]] = []
    for name in PHOTOS:
        with Image.open(folder / name) as im:
            rgb = im.convert("RGB")
        width, height = rgb.size
        for side, across, down in _CROPS:
            for top in _positions(height, side, down):
                for left in _positions(width, side, across):
                    crop = rgb.crop((left, top, left + side, top + side))
                    if len(out) % 3 == 2:
                        crop = crop.convert("L").convert("RGB")
                    resized = crop.resize((size, size), Image.Resampling.BILINEAR)
                    out.append(np.asarray(resized, dtype=np.uint8))
    return np.stack(out)


def from_folder(directory: Path, size: int, count: int = COUNT) -> NDArray[np.uint8]:
    """Up to `count` usable images of `directory` (recursively), evenly spaced in its sorted
    listing, decoded as `extract` decodes them."""
    from extractor.images import ImageError, decode_image
    from extractor.walk import scan

    files = sorted(scan(directory).labels)
    if not files:
        raise ValueError(f"--calibration: no files in {directory}")
    n = min(count, len(files))
    picks = [len(files) * i // n for i in range(n)]
    out = []
    for i in picks:
        try:
            out.append(decode_image((directory / files[i]).read_bytes(), size))
        except (ImageError, OSError):
            continue
    if not out:
        raise ValueError(f"--calibration: no usable image among {len(picks)} files of "
                         f"{directory}")
    return np.stack(out)


def sha256(pixels: NDArray[np.uint8]) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
