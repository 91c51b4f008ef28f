"""The reference runtime: the Keras VGG16 conv base (any Keras 3 backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray


def build_keras_model(weights_path: Path, image_size: int, layers: tuple[str, ...]) -> Any:
    """The Keras VGG16 conv base with these weights, with the outputs of `layers` (a list of
    maps, in that order), truncated after the deepest of them."""
    import keras

    base = keras.applications.VGG16(
        include_top=False, weights=str(weights_path), input_shape=(image_size, image_size, 3)
    )
    outputs = [base.get_layer(layer).output for layer in layers]
    return keras.Model(base.input, outputs, name="vgg16_" + "_".join(layers))


class KerasRuntime:
    name = "keras"
    precision = "fp32"
    quantized_sha256 = ""

    def __init__(self, weights_path: Path, layers: tuple[str, ...], image_size: int) -> None:
        self.layers = layers
        self.model = build_keras_model(weights_path, image_size, layers)
        self.origin = str(weights_path)

    def __call__(self, x: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        outputs = self.model.predict_on_batch(x)
        if not isinstance(outputs, list | tuple):
            outputs = [outputs]
        return {layer: np.asarray(out, dtype=np.float32)
                for layer, out in zip(self.layers, outputs, strict=True)}
