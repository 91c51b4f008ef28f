"""The VGG16 convolutional base: uint8 pixels in, feature maps out."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from extractor.images import PREPROCESSING_ID, preprocess
from extractor.spec import FeatureSpec
from extractor.weights import resolve_weights, weights_sha256

logger = logging.getLogger(__name__)

BACKBONE = "vgg16"
DEFAULT_LAYER = "block5_pool"
DEFAULT_IMAGE_SIZE = 150
#: Pooling layers a cache may tap; block4_pool feeds fine-tuning of block5 from the cache.
LAYERS = ("block5_pool", "block4_pool", "block3_pool")
_DOWNSCALE = {"block5_pool": 32, "block4_pool": 16, "block3_pool": 8}
_CHANNELS = {"block5_pool": 512, "block4_pool": 512, "block3_pool": 256}
MIN_IMAGE_SIZE = 32


def feature_shape(layer: str, image_size: int) -> tuple[int, int, int]:
    side = image_size // _DOWNSCALE[layer]
    return (side, side, _CHANNELS[layer])


def validate(layer: str, image_size: int) -> None:
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}; choose one of {', '.join(LAYERS)}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size must be at least {MIN_IMAGE_SIZE}; got {image_size}")


def make_spec(
    weights_path: Path, layer: str, image_size: int, runtime: str = "keras"
) -> FeatureSpec:
    """The spec of features this base would make; cheap (hashes the weights, loads no model)."""
    validate(layer, image_size)
    return FeatureSpec(
        backbone=BACKBONE,
        weights_sha256=weights_sha256(weights_path),
        layer=layer,
        input_size=image_size,
        preprocessing=PREPROCESSING_ID,
        feature_shape=feature_shape(layer, image_size),
        runtime=runtime,
    )


class ConvBase:
    """VGG16 without its top, truncated at `layer`, with ImageNet (or given) weights.

    Call it on a (N, size, size, 3) uint8 RGB batch from `extractor.images.decode_image`;
    it applies the VGG16 preprocessing and returns float32 feature maps.
    """

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = None,
        image_size: int = DEFAULT_IMAGE_SIZE,
        layer: str = DEFAULT_LAYER,
    ) -> None:
        validate(layer, image_size)
        self.weights_path: Path = resolve_weights(weights)
        self.image_size = image_size
        self.layer = layer

        import keras

        base = keras.applications.VGG16(
            include_top=False,
            weights=str(self.weights_path),
            input_shape=(image_size, image_size, 3),
        )
        out = base.get_layer(layer).output
        self.model = base if out is base.output else keras.Model(base.input, out, name=layer)
        self.spec = make_spec(self.weights_path, layer, image_size)
        logger.info("loaded VGG16 conv base (%s, %s) from %s", layer, image_size, self.weights_path)

    def __call__(self, pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
        if pixels.shape[0] == 0:
            return np.zeros((0, *self.spec.feature_shape), dtype=np.float32)
        out = self.model.predict_on_batch(preprocess(pixels))
        return np.asarray(out, dtype=np.float32)
