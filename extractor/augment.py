"""Random augmented views of an image, reproducible per (file bytes, view, seed).

Three modes. `recipe` (the default) uses the recipe's augmentations; `dihedral` uses the flips
and quarter turns of the square, for images with no canonical orientation (solar cells,
microscopy, satellite tiles), where rotating by 40 degrees and filling corners with edge pixels
makes pictures the data never holds; `flips` adds only the mirror image (left-right), for photos
that do have an up (a dihedral view of a cat would stand it on its head).

The recipe's augmentations are the recipe's (Keras's `ImageDataGenerator(rotation_range=40,
width_shift_range=0.2, height_shift_range=0.2, shear_range=0.2, zoom_range=0.2,
horizontal_flip=True, fill_mode="nearest")`), applied to the decoded, resized pixels as that
generator applies them. Keras 3 no longer exports that generator, so the affine transform is
composed here and applied with `scipy.ndimage.affine_transform`.

A view depends only on the image's SHA-256, the view index and the seed: never on file order,
batch composition or which machine made it, so an interrupted or distributed run makes the same
views as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclasses.dataclass(frozen=True)
class Augmentation:
    rotation_deg: float = 40.0
    width_shift: float = 0.2  # fraction of the width
    height_shift: float = 0.2  # fraction of the height
    #: Degrees, as Keras's generator reads `shear_range` (so the recipe's 0.2 is a small shear).
    shear_deg: float = 0.2
    zoom: float = 0.2  # zoom factor drawn from [1 - zoom, 1 + zoom] per axis
    horizontal_flip: bool = True

    def describe(self) -> str:
        return (
            f"rotation={self.rotation_deg},width_shift={self.width_shift},"
            f"height_shift={self.height_shift},shear_deg={self.shear_deg},zoom={self.zoom},"
            f"hflip={self.horizontal_flip},fill=nearest"
        )


RECIPE = Augmentation()
MODES = ("recipe", "dihedral", "flips")
DIHEDRAL_DESCRIPTION = "dihedral: the 7 flips and quarter turns of the square, in random order"
FLIPS_DESCRIPTION = "flips: the left-right mirror image"
#: Views a mode can make before they repeat (None: no limit).
MAX_VIEWS: dict[str, int | None] = {"recipe": None, "dihedral": 7, "flips": 1}


def describe(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"augment mode must be one of {', '.join(MODES)}; got {mode!r}")
    return {"recipe": RECIPE.describe(), "dihedral": DIHEDRAL_DESCRIPTION,
            "flips": FLIPS_DESCRIPTION}[mode]


def mode_of(description: str) -> str:
    """The mode an `augmentation` description was written by (caches before `augment_mode`)."""
    if description.startswith("dihedral:"):
        return "dihedral"
    if description.startswith("flips:"):
        return "flips"
    return "recipe"


def check(mode: str, views: int) -> None:
    """Refuse a view count the mode cannot fill with distinct views (ValueError)."""
    describe(mode)
    limit = MAX_VIEWS[mode]
    if mode == "flips" and views not in (0, 1):
        raise ValueError(f"--augment-mode flips makes one view, the mirror image: use --augment "
                         f"1; got --augment {views}")
    if limit is not None and views > limit:
        raise ValueError(f"--augment-mode {mode} has {limit} distinct views besides the image "
                         f"(its flips and quarter turns); more would repeat them: use --augment "
                         f"{limit} or fewer; got --augment {views}")


@dataclasses.dataclass(frozen=True)
class Views:
    """How many augmented views each image has besides itself, and how they are made: the one
    description of views shared by caches (`extract --augment`), heads (their metadata), the
    inference path (`extractor.pipeline.decode`) and the service."""

    count: int = 0
    mode: str = ""  # recipe, dihedral or flips (MODES)
    seed: int = 0

    def __bool__(self) -> bool:
        return self.count > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Views:
        if not data:
            return cls()
        return cls(int(data.get("count", 0)), str(data.get("mode", "")), int(data.get("seed", 0)))

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Views:
        """From a cache's attributes (`augment_views`, `augment_mode`, `augment_seed`)."""
        count = int(attrs.get("augment_views", 0) or 0)
        if not count:
            return cls()
        mode = str(attrs.get("augment_mode") or "")
        if not mode:  # caches written before augment_mode was recorded
            mode = mode_of(str(attrs.get("augmentation", "")))
        return cls(count, mode, int(attrs.get("augment_seed", 0) or 0))

    @property
    def description(self) -> str:
        """The views' parameters in words, as a cache's `augmentation` attribute records them."""
        return describe(self.mode) if self else ""

    def to_attrs(self) -> dict[str, Any]:
        """As a cache's (or a shard's) attributes record them (docs/CACHE.md); `none` is the
        mode of a cache without views."""
        return {"augment_views": self.count, "augment_seed": self.seed,
                "augmentation": self.description, "augment_mode": self.mode or "none"}

    def same_kind(self, other: Views) -> bool:
        """Whether views numbered alike are made alike (the same transforms)."""
        if self.mode != other.mode:
            return False
        return self.mode != "recipe" or self.seed == other.seed

    def describe(self) -> str:
        if not self:
            return "no views"
        seed = f", seed {self.seed}" if self.mode == "recipe" else ""
        return f"{self.count} {self.mode} views{seed}"


def make_view(pixels: NDArray[np.uint8], sha256: str, view: int, seed: int,
              mode: str = "recipe") -> NDArray[np.uint8]:
    """View number `view` (1, 2, ...) of an image in the given mode."""
    if mode == "recipe":
        return augment(pixels, view_rng(sha256, view, seed))
    if mode == "dihedral":
        # Each image gets its own order of the 7 non-identity symmetries, so its first 7 views
        # all differ from it and from one another.
        order = view_rng(sha256, 0, seed).permutation(7)
        t = int(order[(view - 1) % 7]) + 1
        out = np.rot90(pixels, t % 4)
        return np.ascontiguousarray(out[:, ::-1] if t >= 4 else out)
    if mode == "flips":
        if view != 1:
            raise ValueError(f"augment mode flips has one view (1); got view {view}")
        return np.ascontiguousarray(pixels[:, ::-1])
    raise ValueError(f"augment mode must be one of {', '.join(MODES)}; got {mode!r}")


def view_rng(sha256: str, view: int, seed: int) -> np.random.Generator:
    """The random stream for one view of one image."""
    digest = hashlib.sha256(f"{sha256}:{view}:{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def augment(
    pixels: NDArray[np.uint8], rng: np.random.Generator, params: Augmentation = RECIPE
) -> NDArray[np.uint8]:
    """One random view of a (H, W, 3) uint8 image, same shape."""
    from scipy import ndimage

    m, flip = recipe_transform(pixels.shape[:2], rng, params)
    src = pixels.astype(np.float32)
    out = np.empty_like(src)
    for c in range(src.shape[2]):
        out[..., c] = ndimage.affine_transform(src[..., c], m[:2, :2], offset=m[:2, 2],
                                               order=1, mode="nearest")
    if flip:
        out = out[:, ::-1]
    return np.clip(out, 0, 255).round().astype(np.uint8)


def recipe_transform(
    shape: tuple[int, ...], rng: np.random.Generator, params: Augmentation = RECIPE
) -> tuple[NDArray[np.float64], bool]:
    """A recipe view's transform, drawn from `rng`: the 3x3 matrix taking output (row, col)
    to input coordinates, and whether the result is then mirrored left-right."""
    h, w = shape[:2]
    theta = np.deg2rad(rng.uniform(-params.rotation_deg, params.rotation_deg))
    tx = rng.uniform(-params.height_shift, params.height_shift) * h
    ty = rng.uniform(-params.width_shift, params.width_shift) * w
    shear = np.deg2rad(rng.uniform(-params.shear_deg, params.shear_deg))
    zx, zy = rng.uniform(1 - params.zoom, 1 + params.zoom, size=2)
    flip = bool(params.horizontal_flip and rng.random() < 0.5)

    # Output -> input coordinates (rows, cols), composed about the image centre as Keras does.
    rotate = np.array([[np.cos(theta), -np.sin(theta), 0],
                       [np.sin(theta), np.cos(theta), 0],
                       [0, 0, 1]])
    shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    shear_m = np.array([[1, -np.sin(shear), 0], [0, np.cos(shear), 0], [0, 0, 1]])
    zoom_m = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    m = rotate @ shift @ shear_m @ zoom_m
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    to_centre = np.array([[1, 0, cy], [0, 1, cx], [0, 0, 1]])
    from_centre = np.array([[1, 0, -cy], [0, 1, -cx], [0, 0, 1]])
    return to_centre @ m @ from_centre, flip


def unmake_view(values: NDArray[np.floating], sha256: str, view: int, seed: int,
                mode: str = "recipe") -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Undo `make_view` on a (H, W) array laid over view number `view` (a heatmap): the array
    in the original image's orientation, and each pixel's weight (1 where the view shows that
    pixel, 0 where it does not: a recipe view shifts and rotates some of the image out)."""
    v = np.asarray(values, dtype=np.float32)
    ones = np.ones_like(v)
    if mode == "recipe":
        from scipy import ndimage

        m, flip = recipe_transform(v.shape, view_rng(sha256, view, seed))
        if flip:
            v = v[:, ::-1]
        inv = np.linalg.inv(m)
        back = [ndimage.affine_transform(a, inv[:2, :2], offset=inv[:2, 2], order=1,
                                         mode="constant", cval=0.0) for a in (v, ones)]
        return back[0].astype(np.float32), back[1].astype(np.float32)
    if mode == "dihedral":
        order = view_rng(sha256, 0, seed).permutation(7)
        t = int(order[(view - 1) % 7]) + 1
        if t >= 4:
            v = v[:, ::-1]
        return np.ascontiguousarray(np.rot90(v, -(t % 4))), ones
    if mode == "flips":
        if view != 1:
            raise ValueError(f"augment mode flips has one view (1); got view {view}")
        return np.ascontiguousarray(v[:, ::-1]), ones
    raise ValueError(f"augment mode must be one of {', '.join(MODES)}; got {mode!r}")
