"""The inference path, its extractor half: image bytes -> identity (SHA-256) -> pixels -> views
-> named features. Written once, here, and used by the local engine (`extractor.runner`), the
Ray engine (`extractor.ray_engine`), the service (`service.predictor`, which keeps its batching,
feature cache, limits and error mapping around it) and the Python API
(`featcache.image_classifier`). The classifier half, features -> probabilities averaged over
an image's views, is `classifier.inference`.

An image's rows are the image itself (row 0), then its augmented views 1..K, made from the
decoded pixels by `extractor.augment.make_view` keyed by the SHA-256 of the bytes: so a file
extracted by either engine, uploaded to the service or given to the Python API gets the same
views, whichever process, batch or machine makes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from extractor import features as named
from extractor import images
from extractor.augment import Views, make_view
from extractor.features import Features
from extractor.images import MAX_PIXELS, ImageError
from extractor.spec import FeatureSpec
from extractor.walk import UNKNOWN, FileStat

#: Pixels -> named features (`extractor.features`): a `ConvBase`, or a stand-in in tests.
FeatureFn = Callable[[NDArray[np.uint8]], Features]


def sha256_of(data: bytes) -> str:
    """An image's identity: the SHA-256 of its bytes, hex (keys views, dedup and caches)."""
    return hashlib.sha256(data).hexdigest()


def decode(
    data: bytes, size: int, views: Views | None = None, *, wanted: Sequence[int] | None = None,
    max_pixels: int = MAX_PIXELS, sha256: str | None = None,
) -> list[NDArray[np.uint8]]:
    """An image's rows: its (size, size, 3) uint8 pixels (row 0), then views 1..K of `views`;
    with `wanted`, only the rows of those numbers (0: the image), in that order.

    Raises `ImageError` (`ImageTooLargeError` past `max_pixels`) for bytes that are not a usable
    image. `sha256`: the bytes' hash when the caller has it already (else hashed here, only
    when a view is wanted). The rows other than row 0 are new arrays; row 0 is the decoded
    array itself, never copied.
    """
    # Through the module: one decoder for every entry point, and one place to watch it.
    pixels = images.decode_image(data, size, max_pixels=max_pixels)
    count = views.count if views else 0
    numbers = range(count + 1) if wanted is None else wanted
    if not any(numbers):  # the image alone (or only row 0 asked for)
        return [pixels for _ in numbers]
    if not views:
        raise ValueError(f"views {list(numbers)} asked for of an image without views")
    sha = sha256 if sha256 is not None else sha256_of(data)
    return [pixels if v == 0 else make_view(pixels, sha, v, views.seed, views.mode)
            for v in numbers]


def view_keys(sha256: str, views: Views | None) -> list[str]:
    """Keys of an image's rows, for caches of features by image: its SHA-256 (row 0), then one
    per view, naming how the view is made (two heads' views of a kind share entries)."""
    count = views.count if views else 0
    if not count or views is None:
        return [sha256]
    return [sha256, *(f"{sha256}:{views.mode}:{views.seed}:{v}" for v in range(1, count + 1))]


@dataclasses.dataclass
class LoadedFile:
    """One file of an extraction, hashed and decoded (or why it could not be)."""

    path: str
    sha256: str
    pixels: NDArray[np.uint8] | None
    error: str | None
    #: Augmented views 1..K of `pixels` (empty without --augment).
    views: list[NDArray[np.uint8]] = dataclasses.field(default_factory=list)
    #: Size and mtime of the file as read (recorded, to notice later changes).
    stat: FileStat = UNKNOWN

    @property
    def rows(self) -> list[NDArray[np.uint8]]:
        """The image itself, then its views: what goes through the conv base."""
        return [] if self.pixels is None else [self.pixels, *self.views]


def load_bytes(path: str, data: bytes, size: int, views: Views | None = None) -> LoadedFile:
    """Hash and `decode` one file's bytes for an engine; an unusable image is recorded (its
    `error`), not raised, so one bad file never stops an extraction."""
    sha = sha256_of(data)
    try:
        rows = decode(data, size, views, sha256=sha)
    except ImageError as exc:
        return LoadedFile(path, sha, None, str(exc))
    return LoadedFile(path, sha, rows[0], None, rows[1:])


def forward(
    features_fn: FeatureFn, rows: Sequence[NDArray[np.uint8]], spec: FeatureSpec,
    batch_size: int | None = None,
) -> Features:
    """The named features of `rows` (pixels), in order, run `batch_size` rows at a time (None:
    all at once); no rows: zero rows of every feature `spec` stores."""
    if not rows:
        return named.empty(spec)
    step = batch_size or len(rows)
    chunks = [features_fn(np.stack(rows[i : i + step])) for i in range(0, len(rows), step)]
    if len(chunks) == 1:
        return dict(chunks[0])
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
