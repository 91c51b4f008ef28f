"""The VGG16 convolutional base: uint8 pixels in, feature maps out, on a chosen runtime.

Runtimes: `keras` (the reference; any Keras 3 backend: TensorFlow, JAX or PyTorch) and
`onnxruntime` (the same Keras model exported to ONNX, see `extractor.onnx_runtime`; equal to the
reference within 1e-3, tested on real images). `auto` picks onnxruntime when it is installed:
`extract` ran faster on it than on Keras/TensorFlow side by side (BENCHMARKS.md), it loads in a
fraction of a second without importing TensorFlow, and the performance issue measured it ~1.35x
Keras on AVX2-only CPUs. Otherwise `auto` falls back to keras, saying why in the log.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from extractor import features as named
from extractor.images import PREPROCESSING_ID, preprocess
from extractor.spec import FeatureSpec
from extractor.weights import resolve_weights, weights_sha256

if TYPE_CHECKING:
    from extractor.onnx_runtime import OnnxConvBase

logger = logging.getLogger(__name__)

BACKBONE = "vgg16"
DEFAULT_LAYER = "block5_pool"
DEFAULT_IMAGE_SIZE = 150
#: Pooling layers a cache may tap; block4_pool feeds fine-tuning of block5 from the cache.
LAYERS = ("block5_pool", "block4_pool", "block3_pool")
_DOWNSCALE = {"block5_pool": 32, "block4_pool": 16, "block3_pool": 8}
_CHANNELS = {"block5_pool": 512, "block4_pool": 512, "block3_pool": 256}
MIN_IMAGE_SIZE = 32
RUNTIMES = ("keras", "onnxruntime")
AUTO = "auto"


def feature_shape(layer: str, image_size: int) -> tuple[int, int, int]:
    side = image_size // _DOWNSCALE[layer]
    return (side, side, _CHANNELS[layer])


def validate(layer: str, image_size: int, pooled_layers: tuple[str, ...] = ()) -> None:
    for name in (layer, *pooled_layers):
        if name not in LAYERS:
            raise ValueError(f"unknown layer {name!r}; choose one of {', '.join(LAYERS)}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size must be at least {MIN_IMAGE_SIZE}; got {image_size}")


def resolve_runtime(runtime: str = AUTO) -> str:
    """`auto` -> the fastest installed runtime; a named runtime is checked and returned."""
    from extractor import onnx_runtime

    if runtime not in (AUTO, *RUNTIMES):
        raise ValueError(
            f"unknown runtime {runtime!r}; choose one of {', '.join((AUTO, *RUNTIMES))}"
        )
    if runtime == "onnxruntime" and not onnx_runtime.available():
        raise ValueError("runtime 'onnxruntime' needs the onnxruntime and onnx packages "
                         "(pip install onnxruntime onnx)")
    if runtime != AUTO:
        return runtime
    if onnx_runtime.available():
        return "onnxruntime"
    logger.info("runtime auto: using keras (onnxruntime, the faster, is not installed: "
                "pip install onnxruntime onnx)")
    return "keras"


def build_keras_model(weights_path: Path, image_size: int, layers: tuple[str, ...]) -> Any:
    """The Keras VGG16 conv base with these weights, with the outputs of `layers` (a list of
    maps, in that order), truncated after the deepest of them."""
    import keras

    base = keras.applications.VGG16(
        include_top=False, weights=str(weights_path), input_shape=(image_size, image_size, 3)
    )
    outputs = [base.get_layer(layer).output for layer in layers]
    return keras.Model(base.input, outputs, name="vgg16_" + "_".join(layers))


def make_spec(
    weights_path: Path, layer: str, image_size: int, runtime: str = "keras",
    pooled_layers: tuple[str, ...] = (),
) -> FeatureSpec:
    """The spec of features this base would make; cheap (hashes the weights, loads no model)."""
    validate(layer, image_size, pooled_layers)
    return FeatureSpec(
        backbone=BACKBONE,
        weights_sha256=weights_sha256(weights_path),
        layer=layer,
        input_size=image_size,
        preprocessing=PREPROCESSING_ID,
        feature_shape=feature_shape(layer, image_size),
        runtime=runtime,
        pooled_layers=tuple(pooled_layers),
    )


class ConvBase:
    """VGG16 without its top, with ImageNet (or given) weights: pixels in, named features out.

    Call it on a (N, size, size, 3) uint8 RGB batch from `extractor.images.decode_image`;
    it applies the VGG16 preprocessing, runs the base once and returns the named features of
    `extractor.features`: the maps of `layer` and the pooled vectors of each of
    `pooled_layers`, all from the same forward pass. `runtime` is `auto`, `keras` or
    `onnxruntime`; `threads` sets ONNX Runtime's intra-op threads (default: the CPUs this
    process may use).
    """

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = None,
        image_size: int = DEFAULT_IMAGE_SIZE,
        layer: str = DEFAULT_LAYER,
        runtime: str = AUTO,
        threads: int | None = None,
        pooled_layers: tuple[str, ...] = (),
    ) -> None:
        validate(layer, image_size, pooled_layers)
        self.weights_path: Path = resolve_weights(weights)
        self.image_size = image_size
        self.layer = layer
        self.runtime = resolve_runtime(runtime)
        self.spec = make_spec(self.weights_path, layer, image_size, self.runtime,
                              tuple(pooled_layers))
        #: The layers the model outputs, in the order it returns them.
        self.layers = named.layers_needed(self.spec)
        self.model: Any = None
        self._onnx: OnnxConvBase | None = None
        if self.runtime == "onnxruntime":
            from extractor import onnx_runtime

            source, origin = onnx_runtime.load_or_export(
                self.weights_path, self.spec.weights_sha256, self.layers, image_size
            )
            self._onnx = onnx_runtime.OnnxConvBase(source, threads)
        else:
            origin = str(self.weights_path)
            self.model = build_keras_model(self.weights_path, image_size, self.layers)
        logger.info("loaded VGG16 conv base (%s, %s) on %s from %s",
                    ", ".join(self.layers), image_size, self.runtime, origin)

    def maps(self, pixels: NDArray[np.uint8]) -> dict[str, NDArray[np.float32]]:
        """Layer name -> its output maps, for each of `self.layers` (one forward pass)."""
        x = preprocess(pixels)
        if self._onnx is not None:
            return self._onnx(x)
        outputs = self.model.predict_on_batch(x)
        if not isinstance(outputs, list | tuple):
            outputs = [outputs]
        return {layer: np.asarray(out, dtype=np.float32)
                for layer, out in zip(self.layers, outputs, strict=True)}

    def __call__(self, pixels: NDArray[np.uint8]) -> named.Features:
        if pixels.shape[0] == 0:
            return named.empty(self.spec)
        return named.from_maps(self.maps(pixels), self.spec)
