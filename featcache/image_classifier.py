"""A head with the conv base it needs: images in, labels and probabilities out.

The same inference path as `extract`, `predict` and `serve`, not a copy of it: image bytes are
hashed, decoded and given the views a head trained on augmented views averages over by
`extractor.pipeline` (views keyed by the SHA-256 of the image's bytes, as `extract` keys them
by the file's and `serve` by the upload's), `ConvBase.from_spec` makes the named features the
head's spec names, and `classifier.inference` averages the head's probabilities over each
image's views and scores its own row with the guard, as `predict` and `serve` do.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from classifier.inference import ImageProbabilities, probabilities
from classifier.views import Views
from extractor.images import ImageError
from extractor.pipeline import decode, forward, sha256_of

if TYPE_CHECKING:
    from classifier.artifact import LoadedHead
    from classifier.explain import Explanation
    from extractor.backbone import ConvBase
    from extractor.spec import FeatureSpec

#: What `predict` takes as one image.
ImageLike = str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | NDArray[Any]


@dataclasses.dataclass
class Predictions:
    """One row per image, in the order given."""

    #: None where the head abstained (confidence below its threshold).
    labels: list[str | None]
    #: (images, classes) float64, columns in `classes` order, rows summing to 1.
    probabilities: NDArray[np.float64]
    classes: list[str]
    #: The out-of-distribution guard's score of each image (1.0 is the threshold) and its
    #: verdict (score <= 1.0); None for a head without a guard.
    ood_scores: NDArray[np.float64] | None = None
    in_distribution: list[bool] | None = None
    #: Whether the head abstained on each image (all False for a head that never abstains).
    abstained: list[bool] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def as_dicts(self) -> list[dict[str, float]]:
        """{class: probability} per image, as `serve` answers."""
        return [dict(zip(self.classes, map(float, row), strict=True))
                for row in self.probabilities]


class ImageClassifier:
    """A trained head (`classifier.artifact.LoadedHead`, which predicts from features) and the
    VGG16 conv base that makes its features, built on first use.

    `predict(images)` takes image files (paths), encoded bytes, PIL images or uint8 arrays
    ((H, W, 3) RGB or (H, W) grayscale; a (N, H, W, 3) array is N images). Paths and bytes give
    exactly the features `extract` and `serve` compute for those files. A PIL image or an array
    is taken as the pixels it holds, encoded losslessly (TIFF, keeping a PIL image's EXIF
    orientation) and decoded on the same path; a JPEG opened with PIL was decoded at full size,
    so its features can differ slightly from the file's, which is decoded at a reduced scale
    (Pillow's draft mode) as `extract` and `serve` do.
    """

    def __init__(self, head: LoadedHead, *, weights: str | os.PathLike[str] | None = None,
                 runtime: str = "auto", batch_size: int = 16, threads: int | None = None,
                 tta: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got batch_size={batch_size}")
        self.head = head
        self.weights = weights
        self.runtime = runtime
        self.batch_size = batch_size
        self.threads = threads
        #: The views each image's probabilities are averaged over (none with tta=False).
        self.views: Views = head.views if tta else Views()
        self._base: ConvBase | None = None

    @property
    def path(self) -> Path:
        return self.head.path

    @property
    def name(self) -> str:
        return self.head.name

    @property
    def kind(self) -> str:
        return self.head.kind

    @property
    def classes_(self) -> list[str]:
        return self.head.classes_

    @property
    def spec(self) -> FeatureSpec:
        return self.head.spec

    @property
    def metadata(self) -> dict[str, Any]:
        return self.head.metadata

    @property
    def base(self) -> ConvBase:
        """The conv base, built (and checked against the head) on first use, as `serve`
        builds it: the head's layer, input size, pooled layers, precision and int8 model."""
        if self._base is None:
            from classifier.predict import check_features
            from extractor.backbone import ConvBase

            base = ConvBase.from_spec(self.head.spec, self.weights, runtime=self.runtime,
                                      threads=self.threads)
            check_features(self.head, base.spec, f"the conv base from {base.weights_path}")
            self._base = base
        return self._base

    def predict(self, images: ImageLike | Iterable[ImageLike], *,
                progress: bool = False) -> Predictions:
        """Labels and probabilities of each image (one image alone, or several), with the
        guard's scores and the head's abstentions."""
        proba, scores = self._predict(images, progress)
        below = self.head.abstain_below
        abstained = [below is not None and float(p.max()) < below for p in proba]
        labels: list[str | None] = [None if a else self.classes_[int(i)]
                                    for a, i in zip(abstained, np.argmax(proba, axis=1),
                                                    strict=True)]
        return Predictions(labels, proba, list(self.classes_), scores,
                           None if scores is None else [bool(s <= 1.0) for s in scores],
                           abstained)

    def predict_proba(self, images: ImageLike | Iterable[ImageLike], *,
                      progress: bool = False) -> NDArray[np.float64]:
        """(images, classes) probabilities, averaged over each image's views."""
        return self._predict(images, progress)[0]

    def _predict(self, images: ImageLike | Iterable[ImageLike], progress: bool
                 ) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
        """Probabilities averaged over views, and the guard's score of each image (None
        without a guard)."""
        from tqdm import tqdm

        items = _as_list(images)
        rows: list[NDArray[np.uint8]] = []
        groups: list[int] = []
        judged: list[ImageProbabilities] = []
        size = self.head.spec.input_size
        for i, item in enumerate(tqdm(items, unit="img", disable=not progress,
                                      desc="predict")):
            rows_of_image = self._pixels(item, i, size)
            rows.extend(rows_of_image)
            groups.extend([i] * len(rows_of_image))
            # A batch holds whole images (each with all its views), so every image's
            # probabilities are averaged within one batch.
            if len(rows) >= self.batch_size:
                judged.append(self._judge(rows, groups))
                rows, groups = [], []
        if rows:
            judged.append(self._judge(rows, groups))
        if not judged:
            return np.zeros((0, len(self.classes_)), np.float64), None
        scores = [j.ood_scores for j in judged if j.ood_scores is not None]
        guard = np.concatenate(scores) if self.head.has_guard and scores else None
        return np.concatenate([j.images for j in judged]), guard

    def explain(self, image: ImageLike) -> Explanation:
        """Where the prediction of one image came from (`classifier.explain`): `.grid`, the
        contribution of each pixel to the chosen class's score, `.overlay`, the image with the
        heatmap over it (PIL; `.overlay_png()` as PNG bytes), and `.label`. With views, their
        heatmaps are mapped back to the image's orientation and averaged."""
        from classifier.explain import explain
        from extractor.features import from_maps

        data, what = _encoded(image, 0)
        sha = sha256_of(data)
        rows = self._decode(data, what, sha)
        maps = self.base.maps(np.stack(rows))
        proba = self.head.predict_proba(from_maps(maps, self.base.spec))
        return explain(self.head, maps, proba, rows[0], self.views, sha)

    def _pixels(self, item: ImageLike, index: int, size: int) -> list[NDArray[np.uint8]]:
        """An image and its views (`pipeline.decode`), as `extract` and `serve` make them."""
        data, what = _encoded(item, index)
        return self._decode(data, what)

    def _decode(self, data: bytes, what: str, sha256: str | None = None
                ) -> list[NDArray[np.uint8]]:
        try:
            return decode(data, self.head.spec.input_size, self.views, sha256=sha256)
        except ImageError as exc:
            raise type(exc)(f"{what}: {exc}") from None

    def _judge(self, rows: Sequence[NDArray[np.uint8]], groups: Sequence[int]
               ) -> ImageProbabilities:
        """The probabilities of the images whose rows these are, and their guard scores."""
        features = forward(self.base, rows, self.base.spec)
        return probabilities(self.head, features, np.asarray(groups))

    def __repr__(self) -> str:
        return (f"ImageClassifier(path={str(self.path)!r}, kind={self.kind!r}, "
                f"classes={self.classes_!r})")


def _as_list(images: ImageLike | Iterable[ImageLike]) -> list[ImageLike]:
    if isinstance(images, str | os.PathLike | bytes | bytearray | memoryview | Image.Image):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        return [images]
    return list(images)


def _encoded(item: ImageLike, index: int) -> tuple[bytes, str]:
    """The image's bytes, and how to name it in an error."""
    if isinstance(item, str | os.PathLike):
        return Path(item).read_bytes(), f"images[{index}] ({os.fspath(item)})"
    what = f"images[{index}]"
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item), what
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or not (item.ndim == 2 or (item.ndim == 3
                                                              and item.shape[2] in (3, 4))):
            raise ValueError(f"{what}: arrays must be uint8 (H, W, 3) RGB, (H, W, 4) RGBA or "
                             f"(H, W) grayscale; got dtype {item.dtype} shape {item.shape}")
        item = Image.fromarray(item)
    if isinstance(item, Image.Image):
        return _lossless(item), what
    raise TypeError(f"{what}: expected a path, bytes, a PIL image or a uint8 array; got "
                    f"{type(item).__name__}")


def _lossless(image: Image.Image) -> bytes:
    """A PIL image as TIFF bytes: every mode Pillow has (but HSV, made RGB), and its EXIF."""
    if image.mode == "HSV":
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="TIFF", exif=image.getexif())
    return buf.getvalue()

