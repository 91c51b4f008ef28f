"""The recipe's dense head in Keras: pooling -> Dense(units, relu) -> Dropout -> Dense(classes).

Two classes get one sigmoid unit (the recipe's binary cross-entropy), more get a softmax.
Training stops when the validation loss has not improved for `patience` epochs and restores
the best weights, so `epochs` is a ceiling rather than a number to tune.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
from numpy.typing import NDArray

from classifier.errors import ArtifactError
from classifier.heads import (
    CLASS_WEIGHTS,
    Head,
    as_labels,
    check_choice,
    check_positive,
    pooled_names,
)
from classifier.pooling import check_pooling
from extractor import FeatureSpec

logger = logging.getLogger(__name__)


class DenseHead(Head):
    kind = "dense"
    model_file = "model.keras"

    def __init__(
        self,
        pooling: str = "flatten",
        units: int = 256,
        dropout: float = 0.5,
        learning_rate: float = 1e-4,
        batch_size: int = 20,
        epochs: int = 200,
        patience: int = 20,
        class_weight: str = "balanced",
        seed: int = 0,
        layers: Sequence[str] | None = None,
    ) -> None:
        self.pooling = pooling
        self.units = units
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.patience = patience
        self.class_weight = class_weight
        self.seed = seed
        #: Layers whose pooled vectors feed the head; None: the maps of the cache's layer,
        #: pooled inside the Keras model as `pooling` says (the recipe's head).
        self.layers = layers

    def feature_names(self, spec: FeatureSpec) -> list[str]:
        if not self.layers:
            return [spec.layer]
        check_pooling(self.pooling)
        if self.pooling == "flatten":
            raise ValueError("pooling=flatten reads maps; with layers= choose avg, max or avgmax")
        return pooled_names(list(self.layers), self.pooling)

    def _validate(self) -> None:
        check_pooling(self.pooling)
        check_choice("class_weight", self.class_weight, CLASS_WEIGHTS)
        for name in ("units", "learning_rate", "batch_size", "epochs"):
            check_positive(name, getattr(self, name))
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1); got dropout={self.dropout!r}")
        if self.patience < 0:
            raise ValueError(f"patience must be at least 0; got patience={self.patience!r}")

    def _build(self, input_shape: tuple[int, ...], n_classes: int) -> Any:
        import keras

        inputs = keras.Input(shape=input_shape, name="features")
        outputs = self._top(inputs, n_classes)
        return keras.Model(inputs, outputs, name="dense_head")

    def _top(self, x: Any, n_classes: int) -> Any:
        """Pooling -> Dense(units, relu) -> Dropout -> sigmoid (2 classes) or softmax."""
        import keras

        if len(x.shape) == 2:
            pass
        elif self.pooling == "flatten":
            x = keras.layers.Flatten()(x)
        elif self.pooling == "avg":
            x = keras.layers.GlobalAveragePooling2D()(x)
        elif self.pooling == "max":
            x = keras.layers.GlobalMaxPooling2D()(x)
        else:
            x = keras.layers.Concatenate()(
                [keras.layers.GlobalAveragePooling2D()(x), keras.layers.GlobalMaxPooling2D()(x)]
            )
        x = keras.layers.Dense(self.units, activation="relu")(x)
        x = keras.layers.Dropout(self.dropout, seed=self.seed)(x)
        if n_classes == 2:
            return keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
        return keras.layers.Dense(n_classes, activation="softmax", name="probability")(x)

    def _train(
        self, model: Any, data: dict[str, Any], val: Any, class_weight: dict[int, float] | None,
        learning_rate: float, epochs: int,
    ) -> dict[str, list[float]]:
        """Compile and fit `model` with RMSprop and early stopping; the per-epoch history."""
        import keras

        n_outputs = int(model.output_shape[-1])
        model.compile(
            optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate),
            loss="binary_crossentropy" if n_outputs == 1 else "sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        monitor = "val_loss" if val is not None else "loss"
        stop = keras.callbacks.EarlyStopping(monitor=monitor, patience=self.patience,
                                             restore_best_weights=True)
        history = model.fit(**data, epochs=epochs, validation_data=val,
                            class_weight=class_weight, callbacks=[stop], verbose=0)
        return {k: [float(v) for v in vs] for k, vs in history.history.items()}

    def fit(
        self,
        X: Any,
        y: Any,
        validation_data: tuple[Any, Any] | None = None,
    ) -> Self:
        """X: maps in memory, or a `keras.utils.PyDataset` of (maps, labels) with y=None."""
        import keras

        self._validate()
        keras.utils.set_random_seed(self.seed)
        data, val, class_weight, input_shape = self._prepare(X, y, validation_data)
        self.model_ = self._build(input_shape, len(self.classes_))
        self.history_ = self._train(self.model_, data, val, class_weight,
                                    self.learning_rate, self.epochs)
        self._note_best(val is not None)
        return self

    def _prepare(
        self, X: Any, y: Any, validation_data: tuple[Any, Any] | None
    ) -> tuple[dict[str, Any], Any, dict[int, float] | None, tuple[int, ...]]:
        """Set `classes_`; return fit's data, validation data, class weights and input shape."""
        import keras

        streamed = isinstance(X, keras.utils.PyDataset)
        if streamed:
            labels = np.asarray(X.labels, dtype=np.int64)
            input_shape = tuple(X.feature_shape)
        else:
            X = np.asarray(self.assemble(X), dtype=np.float32)
            labels = as_labels(y, len(X))
            input_shape = X.shape[1:]
        self.classes_ = np.unique(labels)
        index = {int(c): i for i, c in enumerate(self.classes_)}
        encode = np.vectorize(lambda c: index[int(c)], otypes=[np.int64])

        class_weight = None
        if self.class_weight == "balanced":
            counts = np.bincount(encode(labels), minlength=len(self.classes_))
            class_weight = {
                i: float(len(labels) / (len(counts) * c)) for i, c in enumerate(counts)
            }
        val: Any = None
        if validation_data is not None:
            vx, vy = validation_data
            if isinstance(vx, keras.utils.PyDataset):
                vx.label_map = index
                val = vx
            else:
                val = (np.asarray(self.assemble(vx), dtype=np.float32), encode(np.asarray(vy)))
        if streamed:
            X.label_map = index
            data: dict[str, Any] = {"x": X}
        else:
            data = {"x": X, "y": encode(labels), "batch_size": self.batch_size, "shuffle": True}
        return data, val, class_weight, input_shape

    def _note_best(self, validated: bool, first_epoch: int = 0) -> None:
        """Record the epoch whose weights were kept: the best of those from `first_epoch` on."""
        assert self.history_ is not None
        monitor = "val_loss" if validated else "loss"
        best = first_epoch + int(np.argmin(self.history_[monitor][first_epoch:]))
        self.best_epoch_ = best + 1
        logger.info(
            "%s head: %d epochs, best %s %.4f at epoch %d", self.kind,
            len(self.history_["loss"]), monitor, self.history_[monitor][best], best + 1,
        )

    def predict_proba(self, X: Any) -> NDArray[np.float64]:
        x = np.asarray(self.assemble(X), dtype=np.float32)
        p = np.asarray(self.model_.predict(x, batch_size=256, verbose=0), dtype=np.float64)
        if p.shape[1] == 1:
            p = np.concatenate([1.0 - p, p], axis=1)
        return p / p.sum(axis=1, keepdims=True)

    def save_model(self, directory: Path) -> Path:
        path = Path(directory) / self.model_file
        self.model_.save(path)
        return path

    @classmethod
    def load_model(
        cls, directory: Path, params: Mapping[str, Any], classes: list[int]
    ) -> Self:
        import keras

        path = Path(directory) / cls.model_file
        try:
            # safe_mode refuses Lambda layers and other deserialisation of arbitrary code.
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
        except Exception as exc:
            raise ArtifactError(f"{path} could not be loaded safely ({exc})") from None
        units = int(model.output_shape[-1])
        if units != (1 if len(classes) == 2 else len(classes)):
            raise ArtifactError(
                f"{path} has {units} output units but the metadata lists {len(classes)} classes"
            )
        head = cls(**params)
        head.model_ = model
        head.classes_ = np.asarray(classes, dtype=np.int64)
        return head
