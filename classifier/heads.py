"""Every head behind one small interface: `fit(X, y)`, `predict_proba(X)`, `classes_`.

X is what a cache gives: a mapping of named features (`extractor.features`: the main layer's
maps under its name, `<layer>/avg` and `<layer>/max` pooled vectors) read for the names
`feature_names(spec)` lists, or, as before named features existed, (N, H, W, C) maps of the
head's one layer. A head owns its own reduction of those to the vectors its model sees
(`reduce`: selecting and concatenating the named features, pooling, scaling), so the evaluator
and the service never branch on the head's kind. A 2-D array is taken as already reduced: that
is how the trainer feeds a cache read in chunks, and how scikit-learn tools
(`cross_val_score`, `GridSearchCV`) use a head on vectors they hold. Labels are the cache's
integer class indices; `classes_` lists those seen in training, in the order of
`predict_proba`'s columns.

Heads are scikit-learn estimators (`BaseEstimator`, `ClassifierMixin`): `get_params`,
`set_params`, `clone` and `score` work as for any classifier.

The scikit-learn heads keep the whole (reduced) training set in memory: their solvers need it.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, ClassifierMixin

from classifier.errors import ArtifactError, DataError
from classifier.pooling import check_pooling, pool
from extractor import FeatureSpec
from extractor.spec import POOLS, feature_name

logger = logging.getLogger(__name__)

SCALINGS = ("standard", "sqrt", "l2")
#: Square root, then standardised: power normalisation evens out post-ReLU activations' heavy
#: tails. Cross-validation on ELPV's training images (3x repeated 5-fold) put it 0.4-1.0
#: points above plain standardisation for logistic regression and the SVM, with and without
#: views, on every layer set tried (BENCHMARKS.md, "Accuracy").
DEFAULT_SCALING = "sqrt"
CLASS_WEIGHTS = ("balanced", "none")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {name}={value!r}")


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be greater than 0; got {name}={value!r}")


def as_labels(y: Any, n: int) -> NDArray[np.int64]:
    labels = np.asarray(y).astype(np.int64).reshape(-1)
    if len(labels) != n:
        raise ValueError(f"X and y must have the same number of rows; got {n} and {len(labels)}")
    if len(np.unique(labels)) < 2:
        raise ValueError(f"y must hold at least 2 classes; got {np.unique(labels).tolist()}")
    return labels


def pooled_names(layers: Sequence[str], pooling: str) -> list[str]:
    """The named pooled vectors a pooling of these layers reads, in concatenation order."""
    pools = POOLS if pooling == "avgmax" else (pooling,)
    return [feature_name(layer, p) for layer in layers for p in pools]


def json_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor parameters as JSON values (tuples -> lists, numpy scalars -> Python)."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        return v

    return {k: plain(v) for k, v in params.items()}


def main_maps_layer(features: Mapping[str, Any]) -> str:
    """The name of the maps in a mapping of named features (the one 4-D entry without '/')."""
    layers = [k for k, v in features.items() if "/" not in k and np.ndim(v) == 4]
    if len(layers) != 1:
        raise ValueError(f"cannot tell the maps among features {sorted(features)}")
    return layers[0]


class Head(ClassifierMixin, BaseEstimator, abc.ABC):
    """A trainable classifier on cached features."""

    kind: ClassVar[str]
    #: File name of the saved model inside an artifact directory.
    model_file: ClassVar[str]
    classes_: NDArray[np.int64]
    #: Per-epoch metrics for heads trained by epochs (dense); None for the others.
    history_: dict[str, list[float]] | None = None
    #: The named features the head reads, in order: set by `use_features` before fitting on a
    #: cache (and restored from the artifact); None until then.
    feature_names_: list[str] | None = None

    def feature_names(self, spec: FeatureSpec) -> list[str]:
        """The named features this head reads from features made as `spec` describes."""
        return [spec.layer]

    def use_features(self, spec: FeatureSpec) -> list[str]:
        """Fix the features to read from caches of `spec`; refuse (DataError) what it lacks."""
        try:
            names = self.feature_names(spec)
        except ValueError as exc:
            raise DataError(str(exc)) from None
        missing = spec.missing(names)
        if missing:
            raise DataError(
                f"the {self.kind} head reads features the cache does not hold: "
                f"{', '.join(missing)} (it holds {', '.join(spec.available_names())}); extract "
                f"with --pooled-layers naming those layers"
            )
        self.feature_names_ = names
        return names

    def assemble(self, X: Any) -> Any:
        """Named features -> the array the head reduces: the maps (N, H, W, C) when the head
        reads maps, else its pooled vectors side by side (N, D). Arrays pass through."""
        if not isinstance(X, Mapping):
            return X
        names = self.feature_names_ or self._names_from(X)
        parts = [np.asarray(X[name], dtype=np.float32) for name in names]
        if len(parts) == 1:
            return parts[0]
        if any(p.ndim != 2 for p in parts):
            raise ValueError(f"cannot join maps with other features ({', '.join(names)})")
        return np.concatenate(parts, axis=1)

    def _names_from(self, features: Mapping[str, Any]) -> list[str]:
        """Resolve `feature_names` when given named features without a spec (Python API)."""
        layer = main_maps_layer(features)
        spec = FeatureSpec("", "", layer, 0, "", tuple(np.shape(features[layer])[1:]),
                           pooled_layers=tuple(sorted({k.split("/")[0] for k in features
                                                       if "/" in k})))
        return self.use_features(spec)

    @abc.abstractmethod
    def fit(
        self,
        X: Any,
        y: Any,
        validation_data: tuple[Any, Any] | None = None,
    ) -> Self:
        """Train on X (N, H, W, C) with integer labels y; validation data may steer training."""

    @abc.abstractmethod
    def predict_proba(self, X: Any) -> NDArray[np.float64]:
        """(N, len(classes_)) probabilities, each row summing to 1."""

    def predict(self, X: Any) -> NDArray[np.int64]:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def reduce(self, X: Any) -> NDArray[np.float32]:
        """The head's own reduction of its input, applied chunk by chunk before `fit`."""
        return np.asarray(self.assemble(X), dtype=np.float32)

    def check_spec(self, spec: FeatureSpec) -> None:
        """Refuse (DataError) features this kind of head cannot train on; any are fine here."""

    @abc.abstractmethod
    def save_model(self, directory: Path) -> Path:
        """Write the fitted model into `directory` as `model_file`; return its path."""

    @classmethod
    @abc.abstractmethod
    def load_model(
        cls, directory: Path, params: Mapping[str, Any], classes: list[int]
    ) -> Self:
        """Rebuild a fitted head from `save_model`'s file without running untrusted code."""


# --------------------------------------------------------------------------- scikit-learn

#: Types beyond skops' defaults (which cover scikit-learn estimators and numpy) that our own
#: pipelines contain. Anything else in a file is refused before it is instantiated.
_EXTRA_TRUSTED = (
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
)


class SklearnHead(Head):
    """Pooling (+ optional square root) outside, then a scaler and an estimator in a Pipeline."""

    model_file = "model.skops"

    def __init__(
        self,
        pooling: str = "avgmax",
        scaling: str = DEFAULT_SCALING,
        C: float = 1.0,
        class_weight: str = "balanced",
        seed: int = 0,
        layers: Sequence[str] | None = None,
    ) -> None:
        self.pooling = pooling
        self.scaling = scaling
        self.C = C
        self.class_weight = class_weight
        self.seed = seed
        #: Layers whose pooled vectors are joined; None: the cache's main layer alone.
        self.layers = layers

    def feature_names(self, spec: FeatureSpec) -> list[str]:
        check_pooling(self.pooling)
        layers = list(self.layers) if self.layers else [spec.layer]
        if self.pooling == "flatten":
            if layers != [spec.layer]:
                raise ValueError(
                    f"pooling=flatten reads the maps of the cache's layer {spec.layer}; it "
                    f"cannot join other layers (layers={layers})"
                )
            return [spec.layer]
        return pooled_names(layers, self.pooling)

    def _validate(self) -> None:
        check_pooling(self.pooling)
        check_choice("scaling", self.scaling, SCALINGS)
        check_choice("class_weight", self.class_weight, CLASS_WEIGHTS)
        check_positive("C", self.C)

    @abc.abstractmethod
    def _estimator(self) -> Any:
        """The final step of the pipeline, unfitted."""

    #: The class the loaded pipeline's last step must be (checked after safe loading).
    _estimator_type: ClassVar[str]

    def _pipeline(self) -> Any:
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import Normalizer, StandardScaler

        scaler = Normalizer() if self.scaling == "l2" else StandardScaler()
        return Pipeline([("scale", scaler), ("clf", self._estimator())])

    def reduce(self, X: Any) -> NDArray[np.float32]:
        if isinstance(X, Mapping):
            x = self.assemble(X)
            v = x.reshape(len(x), -1) if x.ndim == 4 else x  # flatten's maps, or pooled vectors
        else:
            x = np.asarray(X)
            if x.ndim == 2:  # already reduced (the trainer reduces chunk by chunk)
                return x.astype(np.float32, copy=False)
            v = pool(x, self.pooling)  # maps of the head's one layer
        v = np.asarray(v, dtype=np.float32)
        if self.scaling == "sqrt":
            # Power normalisation: post-ReLU activations are heavy-tailed; the root evens them.
            v = np.sqrt(np.maximum(v, 0.0))
        return v

    def fit(
        self,
        X: Any,
        y: Any,
        validation_data: tuple[Any, Any] | None = None,
    ) -> Self:
        self._validate()
        v = self.reduce(X)
        labels = as_labels(y, len(v))
        self.pipeline_ = self._pipeline().fit(v, labels)
        self.classes_ = np.asarray(self.pipeline_.classes_, dtype=np.int64)
        return self

    def predict_proba(self, X: Any) -> NDArray[np.float64]:
        # scikit-learn keeps float32 input's dtype: its rows sum to 1 within 1e-7 only.
        # Renormalised in float64, every caller (evaluate, predict, serve, view averages) sees
        # the same numbers.
        p = np.asarray(self.pipeline_.predict_proba(self.reduce(X)), dtype=np.float64)
        return p / p.sum(axis=1, keepdims=True)

    def save_model(self, directory: Path) -> Path:
        import skops.io as sio

        path = Path(directory) / self.model_file
        sio.dump(self.pipeline_, path)
        return path

    @classmethod
    def load_model(
        cls, directory: Path, params: Mapping[str, Any], classes: list[int]
    ) -> Self:
        import skops.io as sio

        path = Path(directory) / cls.model_file
        try:
            untrusted = sio.get_untrusted_types(file=path)
        except Exception as exc:  # a damaged zip or schema: skops raises many kinds
            raise ArtifactError(f"{path} is not a readable skops file ({exc})") from None
        unexpected = sorted(set(untrusted) - set(_EXTRA_TRUSTED))
        if unexpected:
            raise ArtifactError(
                f"{path} holds types a {cls.kind} head never contains and that are not trusted: "
                f"{', '.join(unexpected)}; refusing to load it"
            )
        try:
            pipeline = sio.load(path, trusted=list(untrusted))
        except Exception as exc:
            raise ArtifactError(f"{path} could not be loaded safely ({exc})") from None
        _check_structure(pipeline, cls._estimator_type, path)
        head = cls(**params)
        head.pipeline_ = pipeline
        head.classes_ = np.asarray(pipeline.classes_, dtype=np.int64)
        if head.classes_.tolist() != list(classes):
            raise ArtifactError(
                f"{path} predicts classes {head.classes_.tolist()} but the metadata says "
                f"{list(classes)}"
            )
        return head


def _check_structure(pipeline: Any, estimator_type: str, path: Path) -> None:
    """Trusted types alone allow any scikit-learn object; insist on exactly our pipeline."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    def qualname(obj: Any) -> str:
        return f"{type(obj).__module__}.{type(obj).__qualname__}"

    ok = (
        type(pipeline) is Pipeline
        and [name for name, _ in pipeline.steps] == ["scale", "clf"]
        and type(pipeline.steps[0][1]) in (StandardScaler, Normalizer)
        and qualname(pipeline.steps[1][1]) == estimator_type
    )
    if not ok:
        found = (
            " -> ".join(qualname(step) for _, step in pipeline.steps)
            if isinstance(pipeline, Pipeline)
            else qualname(pipeline)
        )
        raise ArtifactError(
            f"{path} does not hold the expected pipeline (scaler -> {estimator_type}); found "
            f"{found}; refusing to use it"
        )


class LogRegHead(SklearnHead):
    """Multinomial logistic regression (L2-regularised, lbfgs): fast, calibrated, linear."""

    kind = "logreg"
    _estimator_type = "sklearn.linear_model._logistic.LogisticRegression"

    def __init__(
        self,
        pooling: str = "avgmax",
        scaling: str = DEFAULT_SCALING,
        C: float = 0.03,
        class_weight: str = "balanced",
        seed: int = 0,
        layers: Sequence[str] | None = None,
        max_iter: int = 5000,
    ) -> None:
        super().__init__(pooling, scaling, C, class_weight, seed, layers)
        self.max_iter = max_iter

    def _estimator(self) -> Any:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(
            C=self.C,
            max_iter=self.max_iter,
            class_weight=None if self.class_weight == "none" else self.class_weight,
            random_state=self.seed,
        )


class SVMHead(SklearnHead):
    """Support-vector machine; probabilities from Platt scaling fitted by 5-fold CV.

    `CalibratedClassifierCV(SVC(), ensemble=False)` is what scikit-learn recommends in place of
    the deprecated `SVC(probability=True)`; `predict_proba` then agrees with one SVC fitted on
    all the data.
    """

    kind = "svm"
    _estimator_type = "sklearn.calibration.CalibratedClassifierCV"

    def __init__(
        self,
        pooling: str = "avgmax",
        scaling: str = DEFAULT_SCALING,
        C: float = 10.0,
        class_weight: str = "balanced",
        seed: int = 0,
        layers: Sequence[str] | None = None,
        kernel: str = "rbf",
    ) -> None:
        super().__init__(pooling, scaling, C, class_weight, seed, layers)
        self.kernel = kernel

    def _validate(self) -> None:
        super()._validate()
        check_choice("kernel", self.kernel, ("rbf", "linear"))

    def _estimator(self) -> Any:
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import SVC

        svc = SVC(
            C=self.C,
            kernel=self.kernel,
            class_weight=None if self.class_weight == "none" else self.class_weight,
            random_state=self.seed,
        )
        return CalibratedClassifierCV(svc, ensemble=False, cv=5)
