"""The heads being served: loading fixed head folders, the one compatibility rule, and the
immutable registry snapshot that every request resolves its head from.

A request takes its `ServedHead` from the registry snapshot current when it starts and keeps that
object to the end, so a reload (service/head_store.py) that swaps the snapshot never changes the
head under a request in flight.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from extractor.features import Features, shape_of
from extractor.spec import FeatureSpec
from service.errors import (
    HeadRequiredError,
    HeadSpecMismatchError,
    NotReadyError,
    StartupError,
    UnknownHeadError,
    UnknownVersionError,
)

logger = logging.getLogger(__name__)


class Head(Protocol):
    """What the service needs of a trained head (`classifier.artifact.load_head`'s result)."""

    name: str
    classes_: list[str]
    spec: FeatureSpec
    metadata: dict[str, Any]
    #: The named features (`extractor.features`) the head reads.
    feature_names: list[str]
    #: The augmented views it averages over at prediction time (`classifier.views.Views`).
    views: Any

    def predict_proba(self, features: Features) -> NDArray[Any]: ...


@dataclasses.dataclass(frozen=True, eq=False)
class ServedHead:
    """A loaded head under the name (and version) it is served as.

    `version` is None for an unversioned head (a `--head` folder, or a plain head folder in the
    heads folder); `fixed` marks `--head` heads, which are never reloaded.
    """

    name: str
    version: int | None
    model: Head
    fixed: bool = False

    @property
    def classes_(self) -> list[str]:
        return self.model.classes_

    @property
    def spec(self) -> FeatureSpec:
        return self.model.spec

    @property
    def metadata(self) -> dict[str, Any]:
        return self.model.metadata

    @property
    def feature_names(self) -> list[str]:
        return self.model.feature_names

    @property
    def views(self) -> Any:
        return self.model.views

    @property
    def version_label(self) -> str | None:
        """The version as the API shows it: a string, or None for an unversioned head."""
        return None if self.version is None else str(self.version)

    def predict_proba(self, features: Features) -> NDArray[Any]:
        return self.model.predict_proba(features)

    @property
    def has_guard(self) -> bool:
        """Whether the head has an out-of-distribution guard (`classifier.ood`)."""
        return getattr(self.model, "detector", None) is not None

    @property
    def abstain_below(self) -> float | None:
        """The confidence below which the head abstains; None: it always answers."""
        return getattr(self.model, "abstain_below", None)

    def ood_scores(self, features: Features) -> NDArray[Any] | None:
        """The guard's scores (1.0 is the threshold), or None for a head without a guard."""
        scores = getattr(self.model, "ood_scores", None)
        return None if scores is None else scores(features)


#: What the lean serving image (docker/Dockerfile, target `serve`) cannot serve, and where to.
FULL_IMAGE_HINT = ("Serve it with the full image (docker/Dockerfile's default target `full`; "
                   "with compose: FEATCACHE_SERVE_TARGET=full "
                   "FEATCACHE_SERVE_IMAGE=featcache:latest), or serve a logreg or svm head")


def keras_installed() -> bool:
    """Whether Keras can be imported here, without importing it (and TensorFlow with it)."""
    try:
        return importlib.util.find_spec("keras") is not None
    except (ImportError, ValueError):
        return False


def keras_head_kind(metadata: Mapping[str, Any]) -> str | None:
    """The kind of a head whose model is a Keras file (dense, finetune) when this installation
    has no Keras to load it with (the lean serving image); None when the head can be loaded.

    Checked before loading, so that such a head is refused with a sentence that says which
    image serves it rather than with an ImportError from deep inside the loader."""
    model_file = metadata.get("model_file")
    if not (isinstance(model_file, str) and model_file.endswith(".keras")) or keras_installed():
        return None
    return str(metadata.get("kind") or "Keras")


def keras_refusal(path: Path) -> str | None:
    """Why the head folder `path` cannot be served here because it needs Keras; None if not."""
    from classifier.artifact import read_metadata

    kind = keras_head_kind(read_metadata(path))
    if kind is None:
        return None
    return (f"it is a {kind} head, a Keras model, and Keras is not installed here (the lean "
            "serving image has neither Keras nor TensorFlow: it serves scikit-learn heads, "
            f"logreg and svm, on ONNX Runtime). {FULL_IMAGE_HINT}.")


def load_heads(paths: Sequence[Path]) -> list[ServedHead]:
    """Load every `--head` folder; a missing, unreadable or duplicate head stops the start-up,
    and so does a Keras head where Keras is not installed (the lean serving image)."""
    from classifier.artifact import load_head

    heads: list[ServedHead] = []
    seen: dict[str, Path] = {}
    for path in paths:
        try:
            refusal = keras_refusal(path)
            loaded = load_head(path) if refusal is None else None
        except (ValueError, RuntimeError, OSError) as exc:
            raise StartupError(f"cannot load head {str(path)!r}: {exc}") from exc
        if loaded is None:
            raise StartupError(f"cannot serve head {str(path)!r}: {refusal}")
        if loaded.name in seen:
            raise StartupError(
                f"two heads are named {loaded.name!r} ({seen[loaded.name]} and {path}); "
                "head names must be unique"
            )
        seen[loaded.name] = path
        heads.append(ServedHead(loaded.name, None, loaded, fixed=True))
        logger.info("loaded head %r from %s (classes: %s)", loaded.name, path,
                    ", ".join(loaded.classes_))
    return heads


def check_head(head: Head | ServedHead, base_spec: FeatureSpec) -> None:
    """Refuse a head trained on features the loaded base does not make.

    The one place that decides whether a head can be served by the loaded conv base: start-up
    and every reload go through it. The features must have been made alike (weights, input
    size, preprocessing, precision: every compatibility field but the stored layer), and the
    base must give every named feature the head reads (`base_spec.missing`): a head of pooled
    vectors of block3-5 is served by a base whose maps are block5_pool's or block4_pool's.
    """
    diffs = base_spec.feed_differences(head.spec)
    missing = base_spec.missing(head.feature_names)
    if diffs:
        detail = "; ".join(f"{k}: {h!r} vs {b!r}" for k, (b, h) in diffs.items())
        if head.spec.precision != base_spec.precision:
            hint = (f"Serve it with --precision {head.spec.precision} (FEATCACHE_PRECISION), "
                    "or retrain it on features of this precision.")
        else:
            hint = ("Retrain the head on a cache extracted with these weights and settings, or "
                    "serve it with the weights it was trained on (FEATCACHE_WEIGHTS).")
        raise HeadSpecMismatchError(
            f"refusing to serve head {head.name!r}: it was trained on features made "
            f"differently from the loaded VGG16 base's ({detail}; the head's vs the base's). "
            f"{hint}",
            fields=tuple(diffs),
        )
    if missing:
        raise HeadSpecMismatchError(
            f"refusing to serve head {head.name!r}: it reads {', '.join(missing)}, which the "
            f"loaded base does not make (its maps are {base_spec.layer}'s; pooled vectors of "
            f"{', '.join(base_spec.pooled_layers) or 'no other layer'}). Serve heads of "
            "another layer's maps with a serve of their own.",
            fields=("layer",),
        )


def check_heads(heads: Sequence[Head | ServedHead], base_spec: FeatureSpec) -> None:
    """Refuse any head trained on features the loaded base does not make."""
    for head in heads:
        check_head(head, base_spec)


def trial_features(head: Head | ServedHead) -> Features:
    """One row of zero features of every kind the head reads, for a trial prediction."""
    size = head.spec.input_size
    return {name: np.zeros((1, *shape_of(name, size)), dtype=np.float32)
            for name in head.feature_names}


class HeadRegistry:
    """An immutable snapshot of the served heads: by name, each with one or more versions.

    Iterating gives each name's latest (highest) version, in the order given. `default` is the
    head a request without a name gets; None when that would be a guess (several heads and none
    named as the default).
    """

    def __init__(self, heads: Sequence[ServedHead], default: str | None = None) -> None:
        versions: dict[str, dict[int | None, ServedHead]] = {}
        for head in heads:
            versions.setdefault(head.name, {})[head.version] = head
        self._versions = versions
        self._latest = {name: by_version[_latest_key(by_version)]
                        for name, by_version in versions.items()}
        self.default = default

    def __iter__(self) -> Iterator[ServedHead]:
        return iter(self._latest.values())

    def __len__(self) -> int:
        return len(self._latest)

    def __contains__(self, name: object) -> bool:
        return name in self._latest

    @property
    def names(self) -> list[str]:
        return list(self._latest)

    def all(self) -> list[ServedHead]:
        """Every served version of every head."""
        return [h for name in self._versions for h in self.versions(name)]

    def versions(self, name: str) -> list[ServedHead]:
        """Every served version of `name`, oldest first."""
        by_version = self._versions_of(name)
        return [by_version[k] for k in sorted(by_version, key=lambda v: -1 if v is None else v)]

    def get(self, name: str | None, version: int | None = None) -> ServedHead:
        """The head a request names (its latest version unless `version` is given)."""
        if name is None or name == "":
            name = self._default_name()
        by_version = self._versions_of(name)
        if version is None:
            return self._latest[name]
        try:
            return by_version[version]
        except KeyError:
            served = [str(v) for v in sorted(k for k in by_version if k is not None)]
            raise UnknownVersionError(
                f"head {name!r} has no version {version} being served; served versions: "
                f"{', '.join(served) or 'none (it is unversioned)'}"
            ) from None

    def _versions_of(self, name: str) -> dict[int | None, ServedHead]:
        try:
            return self._versions[name]
        except KeyError:
            raise UnknownHeadError(
                f"unknown head {name!r}; served heads: {', '.join(self._latest) or 'none'}"
            ) from None

    def _default_name(self) -> str:
        if self.default is not None:
            if self.default not in self._latest:
                raise UnknownHeadError(
                    f"the default head {self.default!r} is not being served; name one of: "
                    f"{', '.join(self._latest) or 'none'}"
                )
            return self.default
        if not self._latest:
            raise NotReadyError("no head is being served yet")
        raise HeadRequiredError(
            f"several heads are served and none is the default; name one with ?head=NAME: "
            f"{', '.join(self._latest)}"
        )


def _latest_key(by_version: dict[int | None, ServedHead]) -> int | None:
    numbered = [v for v in by_version if v is not None]
    return max(numbered) if numbered else None
