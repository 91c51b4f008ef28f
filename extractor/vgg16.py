"""VGG16's facts: the layers a cache may tap, their geometry, and the preprocessing its ImageNet
weights expect. Pure constants and numpy: it imports nothing of the product, so `features`,
`backbone`, `images` and the runtimes all import it and none of them imports another for these.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

BACKBONE = "vgg16"
DEFAULT_LAYER = "block5_pool"
DEFAULT_IMAGE_SIZE = 150
#: Pooling layers a cache may tap; block4_pool feeds fine-tuning of block5 from the cache.
LAYERS = ("block5_pool", "block4_pool", "block3_pool")
_DOWNSCALE = {"block5_pool": 32, "block4_pool": 16, "block3_pool": 8}
_CHANNELS = {"block5_pool": 512, "block4_pool": 512, "block3_pool": 256}
MIN_IMAGE_SIZE = 32

#: ImageNet channel means in BGR order, as `keras.applications.vgg16.preprocess_input` subtracts.
IMAGENET_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)

#: Identifies this preprocessing (the decoding of `extractor.images` and `preprocess` below) in
#: cache and head metadata; bump it whenever pixels could change.
PREPROCESSING_ID = "v1:pillow-exif-rgb,draft,bilinear-squash;vgg16-caffe-bgr-mean"


def feature_shape(layer: str, image_size: int) -> tuple[int, int, int]:
    """The (H, W, C) maps of a tapped pooling layer at this input size."""
    side = image_size // _DOWNSCALE[layer]
    return (side, side, _CHANNELS[layer])


def layer_stride(layer: str) -> int:
    """How many input pixels one step of a layer's grid spans: 8, 16 or 32 for the tapped
    pools, and each block's convolutions run at the stride of the pool before them."""
    if layer in _DOWNSCALE:
        return _DOWNSCALE[layer]
    block = layer.split("_")[0]
    if not (block.startswith("block") and block[5:].isdigit() and 1 <= int(block[5:]) <= 5):
        raise ValueError(f"unknown VGG16 layer {layer!r}")
    return 2 ** (int(block[5:]) - 1)


def validate(layer: str, image_size: int, pooled_layers: tuple[str, ...] = ()) -> None:
    """Refuse (ValueError) a layer VGG16 has no tap for, or an input too small for its pools."""
    for name in (layer, *pooled_layers):
        if name not in LAYERS:
            raise ValueError(f"unknown layer {name!r}; choose one of {', '.join(LAYERS)}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size must be at least {MIN_IMAGE_SIZE}; got {image_size}")


def preprocess(pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
    """(N, H, W, 3) uint8 RGB -> the float32 input VGG16's ImageNet weights expect.

    Equal to `keras.applications.vgg16.preprocess_input` ("caffe" mode: RGB -> BGR, ImageNet
    means subtracted, range 0..255), written in numpy so the decode path needs no TensorFlow.
    """
    return pixels[..., ::-1].astype(np.float32) - IMAGENET_BGR_MEAN
