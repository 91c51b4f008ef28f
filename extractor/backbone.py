"""The VGG16 convolutional base: uint8 pixels in, named features out, on a chosen runtime.

`ConvBase` is the façade; what runs the layers is an `extractor.runtimes` runtime: `keras` (the
reference; any Keras 3 backend) or `onnxruntime` (an ONNX graph built from the weights file,
equal to the reference within 1e-3, tested on real images), in fp32 or, with
`precision="int8"`, a quantized model (`extractor.runtimes.int8`: features within cosine 0.99
of fp32, about 4x faster on CPUs with VNNI). `auto` picks onnxruntime when it is installed:
`extract` ran faster on it than on Keras/TensorFlow side by side (BENCHMARKS.md), it loads in a
fraction of a second without importing TensorFlow, and the performance issue measured it ~1.35x
Keras on AVX2-only CPUs. Otherwise `auto` falls back to keras, saying why in the log.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from extractor import features as named
from extractor import runtimes
from extractor.runtimes import AUTO, PRECISIONS, RUNTIMES
from extractor.runtimes.keras import build_keras_model
from extractor.spec import FeatureSpec
from extractor.vgg16 import (
    BACKBONE,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_LAYER,
    PREPROCESSING_ID,
    feature_shape,
    preprocess,
    validate,
)
from extractor.weights import resolve_weights, weights_sha256

logger = logging.getLogger(__name__)

__all__ = [
    "AUTO", "PRECISIONS", "RUNTIMES", "ConvBase", "build_keras_model", "make_spec",
    "resolve_runtime",
]


def resolve_runtime(runtime: str = AUTO, precision: str = "fp32") -> str:
    """`auto` -> the fastest installed runtime; a named runtime is checked and returned."""
    return runtimes.resolve(runtime, precision)


def make_spec(
    weights_path: Path, layer: str, image_size: int, runtime: str = "keras",
    pooled_layers: tuple[str, ...] = (), precision: str = "fp32",
    quantized_sha256: str | None = None, calibration: Path | None = None,
) -> FeatureSpec:
    """The spec of features this base would make, without loading a model.

    Cheap for fp32 (hashes the weights). For int8 it finds the quantized model (the one hashing
    to `quantized_sha256` when given), building it once where this machine has none
    (`extractor.runtimes.int8.prepare`; `Int8Error` when the asked-for model cannot be had).
    """
    validate(layer, image_size, pooled_layers)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    weights_hash = weights_sha256(weights_path)
    qsha = ""
    if precision == "int8":
        from extractor.runtimes import int8

        calib = int8.folder_calibration(calibration, image_size) if calibration else None
        qsha = int8.prepare(weights_path, weights_hash, image_size,
                            want_sha256=quantized_sha256 or None, calib=calib).sha256
    return _spec(weights_hash, layer, image_size, runtime, pooled_layers, precision, qsha)


def _spec(weights_hash: str, layer: str, image_size: int, runtime: str,
          pooled_layers: tuple[str, ...], precision: str, quantized_sha256: str) -> FeatureSpec:
    return FeatureSpec(
        backbone=BACKBONE,
        weights_sha256=weights_hash,
        layer=layer,
        input_size=image_size,
        preprocessing=PREPROCESSING_ID,
        feature_shape=feature_shape(layer, image_size),
        runtime=runtime,
        pooled_layers=tuple(pooled_layers),
        precision=precision,
        quantized_sha256=quantized_sha256,
    )


class ConvBase:
    """VGG16 without its top, with ImageNet (or given) weights: pixels in, named features out.

    Call it on a (N, size, size, 3) uint8 RGB batch from `extractor.images.decode_image`;
    it applies the VGG16 preprocessing, runs the base once and returns the named features of
    `extractor.features`: the maps of `layer` and the pooled vectors of each of
    `pooled_layers`, all from the same forward pass. `runtime` is `auto`, `keras` or
    `onnxruntime`; `threads` sets ONNX Runtime's intra-op threads (default: the CPUs this
    process may use). `precision="int8"` runs the quantized model: the one hashing to
    `quantized_sha256` when given (to extend a cache or serve a head made with it), else this
    machine's (built once, calibrated on the bundled photos or on `calibration`'s images).
    """

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = None,
        image_size: int = DEFAULT_IMAGE_SIZE,
        layer: str = DEFAULT_LAYER,
        runtime: str = AUTO,
        threads: int | None = None,
        pooled_layers: tuple[str, ...] = (),
        precision: str = "fp32",
        quantized_sha256: str | None = None,
        calibration: Path | None = None,
    ) -> None:
        validate(layer, image_size, pooled_layers)
        self.weights_path: Path = resolve_weights(weights)
        self.image_size = image_size
        self.layer = layer
        self.runtime = resolve_runtime(runtime, precision)
        weights_hash = weights_sha256(self.weights_path)
        draft = _spec(weights_hash, layer, image_size, self.runtime, tuple(pooled_layers),
                      precision, "")
        #: The layers the model outputs, in the order it returns them.
        self.layers = named.layers_needed(draft)
        self.engine: runtimes.Runtime = runtimes.load(
            self.runtime, self.weights_path, weights_hash, self.layers, image_size,
            precision=precision, threads=threads, quantized_sha256=quantized_sha256,
            calibration=calibration,
        )
        self.spec = _spec(weights_hash, layer, image_size, self.runtime, tuple(pooled_layers),
                          precision, self.engine.quantized_sha256)
        logger.info("loaded VGG16 conv base (%s, %s) on %s %s from %s",
                    ", ".join(self.layers), image_size, self.runtime, precision,
                    self.engine.origin)

    @classmethod
    def from_spec(
        cls, spec: FeatureSpec, weights: str | os.PathLike[str] | None = None, *,
        runtime: str | None = None, threads: int | None = None,
    ) -> ConvBase:
        """The conv base that makes `spec`'s features: its layer, input size, pooled layers,
        precision and, for int8, the very quantized model (`quantized_sha256`). The one way
        every engine, the service and the Python API build it.

        `runtime`: None runs the spec's own runtime; the service and the Python API pass
        `auto` (a head's spec records the runtime that made its training features, and every
        runtime is tested to give the same features). `weights`: as `ConvBase`'s; the caller
        checks `base.spec` against what it needs (its weights file may differ).
        """
        return cls(weights, spec.input_size, spec.layer,
                   spec.runtime if runtime is None else runtime, threads=threads,
                   pooled_layers=tuple(spec.pooled_layers), precision=spec.precision,
                   quantized_sha256=spec.quantized_sha256 or None)

    def maps(self, pixels: NDArray[np.uint8]) -> dict[str, NDArray[np.float32]]:
        """Layer name -> its output maps, for each of `self.layers` (one forward pass)."""
        return self.engine(preprocess(pixels))

    def __call__(self, pixels: NDArray[np.uint8]) -> named.Features:
        if pixels.shape[0] == 0:
            return named.empty(self.spec)
        return named.from_maps(self.maps(pixels), self.spec)
