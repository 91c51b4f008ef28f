"""How features were made: the record that keeps caches, heads and the service consistent."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

#: The fields that change the features themselves. Two caches (or a cache and a head) whose
#: values differ in any of these must never be mixed.
COMPATIBILITY_FIELDS = (
    "backbone", "weights_sha256", "layer", "input_size", "preprocessing", "precision",
    "quantized_sha256",
)

#: Global poolings stored for each of a spec's `pooled_layers`: name suffixes of the features.
POOLS = ("avg", "max")


class SpecMismatchError(ValueError):
    """Features made one way were about to be mixed with features made another way."""


def feature_name(layer: str, pool: str | None = None) -> str:
    """`block5_pool` (the maps) or `block5_pool/avg` (a pooled vector): a feature's name."""
    return layer if pool is None else f"{layer}/{pool}"


def parse_feature_name(name: str) -> tuple[str, str | None]:
    """`block4_pool/max` -> ("block4_pool", "max"); `block5_pool` -> ("block5_pool", None)."""
    layer, _, pool = name.partition("/")
    if pool and pool not in POOLS:
        raise ValueError(f"unknown pooling in feature name {name!r}; choose one of "
                         f"{', '.join(POOLS)}")
    return layer, pool or None


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    backbone: str
    weights_sha256: str
    #: The layer whose maps are stored (`/features`), of shape `feature_shape`.
    layer: str
    input_size: int
    preprocessing: str
    feature_shape: tuple[int, ...]
    #: Which runtime computed the features (keras, onnxruntime, ...). Informational: every
    #: backend is tested to give the same features, so it is not part of compatibility.
    runtime: str = "keras"
    #: Layers whose global average and max pooled vectors are stored beside the maps
    #: (`/pooled/<layer>/avg|max`). Not a compatibility field: a cache may hold more than a
    #: head needs; readers check that what they need is there (`missing`).
    pooled_layers: tuple[str, ...] = ()
    #: Arithmetic of the conv base: fp32 (equal to Keras) or int8 (a quantized model).
    precision: str = "fp32"
    #: SHA-256 of the quantized model that made int8 features; empty for fp32.
    quantized_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["feature_shape"] = list(self.feature_shape)
        out["pooled_layers"] = list(self.pooled_layers)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["input_size"] = int(values["input_size"])
        values["feature_shape"] = tuple(int(v) for v in values["feature_shape"])
        values["pooled_layers"] = tuple(str(v) for v in values.get("pooled_layers") or ())
        return cls(**values)

    def stored_names(self) -> list[str]:
        """The features a cache made with this spec holds: the maps, then the pooled vectors."""
        return [self.layer, *(feature_name(layer, pool) for layer in self.pooled_layers
                              for pool in POOLS)]

    def available_names(self) -> list[str]:
        """What can be read: the stored features plus the main layer's poolings (derived from
        the maps when not stored, as in caches made before pooled vectors were stored)."""
        names = self.stored_names()
        return names + [feature_name(self.layer, p) for p in POOLS
                        if feature_name(self.layer, p) not in names]

    def missing(self, names: Iterable[str]) -> list[str]:
        """The names among `names` these features cannot provide."""
        available = set(self.available_names())
        return [n for n in names if n not in available]

    def differences(self, other: FeatureSpec) -> dict[str, tuple[Any, Any]]:
        """Compatibility fields whose values differ, as {field: (self's, other's)}."""
        return {
            name: (getattr(self, name), getattr(other, name))
            for name in COMPATIBILITY_FIELDS
            if getattr(self, name) != getattr(other, name)
        }

    def feed_differences(self, head: FeatureSpec) -> dict[str, tuple[Any, Any]]:
        """Why features made as `self` says cannot feed a head trained on features made as
        `head` says: the compatibility fields whose values differ, as {field: (self's, head's)}.

        Every compatibility field but `layer`: the layer whose maps a cache stores does not
        change any feature (block4_pool's maps are the same whether block5_pool's are stored
        beside them or not), so a head of pooled vectors is fed by any cache or base that
        provides them. Whether they are provided is `missing`'s question; `can_feed` asks both.
        """
        return {k: v for k, v in self.differences(head).items() if k != "layer"}

    def can_feed(self, head: FeatureSpec, names: Iterable[str] = ()) -> bool:
        """Whether features made as `self` says can feed a head trained on features made as
        `head` says that reads the named features `names`: the one rule of `evaluate`,
        `predict` and `serve`."""
        return not self.feed_differences(head) and not self.missing(names)

    def file_differences(self, other: FeatureSpec) -> dict[str, tuple[Any, Any]]:
        """Why features made as `other` says cannot share one file (a cache, its checkpoints,
        a shard) with features made as `self` says, as {field: (self's, other's)}: every
        compatibility field, and the pooled layers (a file holds the same datasets in every
        row)."""
        diffs = self.differences(other)
        if self.pooled_layers != other.pooled_layers:
            diffs["pooled_layers"] = (self.pooled_layers, other.pooled_layers)
        return diffs

    def can_share_file(self, other: FeatureSpec) -> bool:
        """Whether features made as `other` says may be added to a file of features made as
        `self` says."""
        return not self.file_differences(other)

    def check_compatible(self, other: FeatureSpec, *, what: str, against: str) -> None:
        """Raise `SpecMismatchError` naming every differing field when `other` differs."""
        diffs = self.differences(other)
        if diffs:
            detail = "; ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diffs.items())
            raise SpecMismatchError(
                f"{what} was made differently from {against} ({detail}); features made "
                f"differently cannot be mixed"
            )
