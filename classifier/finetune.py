"""Fine-tuning VGG16's block5 from cached block4_pool maps: the recipe's method 4, made cheap.

Blocks 1-4 stay frozen during fine-tuning, so their output never changes: it is cached once
(`extract --layer block4_pool`, 9x9x512 at 150x150) and training runs only block5 and the head,
~9% of the conv base's multiply-adds. As the recipe prescribes, the head first trains with block5
frozen (a random head's large gradients would wreck the pretrained filters), then block5_conv1..3
are unfrozen and train with the head at a low learning rate. block5 starts from the same ImageNet
weights file that made the cache (checked by its SHA-256).
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np

from classifier.dense import DenseHead
from classifier.errors import DataError
from extractor import FeatureSpec

BLOCK5 = ("block5_conv1", "block5_conv2", "block5_conv3", "block5_pool")
INPUT_LAYER = "block4_pool"


class FineTuneHead(DenseHead):
    kind = "finetune"

    def __init__(
        self,
        weights: str | None = None,
        fine_tune_learning_rate: float = 1e-5,
        fine_tune_epochs: int = 30,
        pooling: str = "flatten",
        units: int = 256,
        dropout: float = 0.5,
        learning_rate: float = 1e-4,
        batch_size: int = 20,
        epochs: int = 100,
        patience: int = 8,
        class_weight: str = "balanced",
        seed: int = 0,
    ) -> None:
        super().__init__(pooling=pooling, units=units, dropout=dropout,
                         learning_rate=learning_rate, batch_size=batch_size, epochs=epochs,
                         patience=patience, class_weight=class_weight, seed=seed)
        self.weights = weights
        self.fine_tune_learning_rate = fine_tune_learning_rate
        self.fine_tune_epochs = fine_tune_epochs

    def feature_names(self, spec: FeatureSpec) -> list[str]:
        return [INPUT_LAYER]

    def check_spec(self, spec: FeatureSpec) -> None:
        """Fine-tuning needs block4_pool maps made with the weights block5 will start from."""
        if spec.layer != INPUT_LAYER:
            raise DataError(
                f"fine-tuning block5 needs a cache of {INPUT_LAYER} features; this cache holds "
                f"{spec.layer}. Extract one with: extract --layer {INPUT_LAYER} ..."
            )
        from extractor.weights import resolve_weights, weights_sha256

        ours = weights_sha256(resolve_weights(self.weights))
        if ours != spec.weights_sha256:
            raise DataError(
                f"block5 would start from weights with sha256 {ours[:12]}..., but the cache was "
                f"made with {spec.weights_sha256[:12]}...; pass the same --weights as extract"
            )

    def _block5(self, input_shape: tuple[int, ...]) -> Any:
        """block5 as a model of its own, (H, W, 512) -> pooled maps, with VGG16's weights."""
        import keras

        from extractor.weights import resolve_weights

        side = int(input_shape[0]) * 16
        vgg = keras.applications.VGG16(
            include_top=False, weights=str(resolve_weights(self.weights)),
            input_shape=(side, side, 3),
        )
        inputs = keras.Input(shape=input_shape, name="features")
        x = inputs
        for name in BLOCK5:
            source = vgg.get_layer(name)
            layer = type(source).from_config(source.get_config())
            x = layer(x)
            layer.set_weights(source.get_weights())
        return keras.Model(inputs, x, name="block5")

    def fit(self, X: Any, y: Any, validation_data: tuple[Any, Any] | None = None) -> Self:
        """Phase 1: the head on block5's output with block5 frozen. Phase 2: both, low rate.

        Frozen, block5 gives the same output every epoch, so phase 1 computes it once and trains
        a plain dense head on it: as the recipe's frozen phase, without rerunning block5.
        X must be in memory (block4_pool maps: ~166 KB a row at 150x150).
        """
        import keras

        self._validate()
        keras.utils.set_random_seed(self.seed)
        X = np.asarray(self.assemble(X), dtype=np.float32)
        block5 = self._block5(X.shape[1:])
        val5 = None
        if validation_data is not None:
            vx = block5.predict(np.asarray(self.assemble(validation_data[0]), np.float32),
                                batch_size=64, verbose=0)
            val5 = (vx, validation_data[1])
        dense_params = {k: v for k, v in self.get_params().items()
                        if k in DenseHead().get_params()}
        top = DenseHead(**dense_params).fit(block5.predict(X, batch_size=64, verbose=0), y, val5)

        data, val, class_weight, input_shape = self._prepare(X, y, validation_data)
        inputs = keras.Input(shape=input_shape, name="features")
        x = inputs
        for layer in block5.layers[1:]:
            x = layer(x)
        self.model_ = keras.Model(inputs, self._top(x, len(self.classes_)), name="finetune")
        ours = [layer for layer in self.model_.layers[len(block5.layers):] if layer.weights]
        theirs = [layer for layer in top.model_.layers if layer.weights]
        for dst, src in zip(ours, theirs, strict=True):
            dst.set_weights(src.get_weights())
        tuned = self._train(self.model_, data, val, class_weight,
                            self.fine_tune_learning_rate, self.fine_tune_epochs)
        assert top.history_ is not None
        self.history_ = {k: top.history_[k] + tuned.get(k, []) for k in top.history_}
        # The kept weights are phase 2's best (the recipe always fine-tunes after the head).
        self._note_best(val is not None, first_epoch=len(top.history_["loss"]))
        return self
