"""Loading the heads to serve, and refusing any whose features differ from the base's."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from extractor.spec import FeatureSpec, SpecMismatchError
from service.errors import HeadSpecMismatchError, StartupError, UnknownHeadError

logger = logging.getLogger(__name__)


class Head(Protocol):
    """What the service needs of a trained head (`classifier.artifact.load_head`'s result)."""

    name: str
    classes_: list[str]
    spec: FeatureSpec
    metadata: dict[str, Any]

    def predict_proba(self, features: NDArray[np.float32]) -> NDArray[Any]: ...


def load_heads(paths: Sequence[Path]) -> list[Head]:
    """Load every head folder; a missing, unreadable or duplicate head stops the start-up."""
    if not paths:
        raise StartupError("no head to serve: pass --head heads/NAME (or set FEATCACHE_HEADS)")
    from classifier.artifact import load_head

    heads: list[Head] = []
    seen: dict[str, Path] = {}
    for path in paths:
        try:
            head = load_head(path)
        except (ValueError, RuntimeError, OSError) as exc:
            raise StartupError(f"cannot load head {str(path)!r}: {exc}") from exc
        if head.name in seen:
            raise StartupError(
                f"two heads are named {head.name!r} ({seen[head.name]} and {path}); "
                "head names must be unique"
            )
        seen[head.name] = path
        heads.append(head)
        logger.info("loaded head %r from %s (classes: %s)", head.name, path,
                    ", ".join(head.classes_))
    return heads


def check_heads(heads: Sequence[Head], base_spec: FeatureSpec) -> None:
    """Refuse any head trained on features the loaded base does not make."""
    for head in heads:
        try:
            head.spec.check_compatible(base_spec, what=f"head {head.name!r}",
                                       against="the loaded VGG16 base")
        except SpecMismatchError as exc:
            if head.spec.precision != base_spec.precision:
                hint = (f"Serve it with --precision {head.spec.precision} "
                        "(FEATCACHE_PRECISION), or retrain it on features of this precision.")
            else:
                hint = ("Retrain the head on a cache extracted with these weights and settings, "
                        "or serve it with the weights it was trained on (FEATCACHE_WEIGHTS).")
            raise HeadSpecMismatchError(
                f"refusing to serve {exc} (values: the head's vs the base's). {hint}"
            ) from None


class HeadRegistry:
    """The loaded heads by name; the first one given is the default."""

    def __init__(self, heads: Sequence[Head]) -> None:
        if not heads:
            raise StartupError("no head to serve")
        self._heads = {h.name: h for h in heads}
        self.default = heads[0].name

    def __iter__(self) -> Iterator[Head]:
        return iter(self._heads.values())

    def __len__(self) -> int:
        return len(self._heads)

    def get(self, name: str | None) -> Head:
        if name is None or name == "":
            return self._heads[self.default]
        try:
            return self._heads[name]
        except KeyError:
            raise UnknownHeadError(
                f"unknown head {name!r}; loaded heads: {', '.join(self._heads)}"
            ) from None
