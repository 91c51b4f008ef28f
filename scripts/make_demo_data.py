#!/usr/bin/env python3
"""Build the demo image set from scikit-image's bundled LFW subset (no download needed).

usage: make_demo_data.py OUT_DIR

Writes OUT_DIR/{train,validation}/{face,non_face}/*.png: 100 face and 100 non-face crops
(25x25 grayscale, from Labeled Faces in the Wild, as shipped inside scikit-image), 80/20 split.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    from skimage.data import lfw_subset

    out = Path(sys.argv[1])
    images = lfw_subset()  # (200, 25, 25) floats in [0, 1]: 100 faces, then 100 non-faces
    for i, img in enumerate(images):
        cls = "face" if i < 100 else "non_face"
        split = "validation" if i % 5 == 0 else "train"
        folder = out / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255).round().astype(np.uint8)).save(folder / f"{cls}{i:03d}.png")
    print(f"wrote {len(images)} images under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
