"""How features were made: the record that keeps caches, heads and the service consistent."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

#: The fields that change the features themselves. Two caches (or a cache and a head) whose
#: values differ in any of these must never be mixed.
COMPATIBILITY_FIELDS = ("backbone", "weights_sha256", "layer", "input_size", "preprocessing")


class SpecMismatchError(ValueError):
    """Features made one way were about to be mixed with features made another way."""


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    backbone: str
    weights_sha256: str
    layer: str
    input_size: int
    preprocessing: str
    feature_shape: tuple[int, ...]
    #: Which runtime computed the features (keras, onnxruntime, ...). Informational: every
    #: backend is tested to give the same features, so it is not part of compatibility.
    runtime: str = "keras"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["feature_shape"] = list(self.feature_shape)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["input_size"] = int(values["input_size"])
        values["feature_shape"] = tuple(int(v) for v in values["feature_shape"])
        return cls(**values)

    def differences(self, other: FeatureSpec) -> dict[str, tuple[Any, Any]]:
        """Compatibility fields whose values differ, as {field: (self's, other's)}."""
        return {
            name: (getattr(self, name), getattr(other, name))
            for name in COMPATIBILITY_FIELDS
            if getattr(self, name) != getattr(other, name)
        }

    def check_compatible(self, other: FeatureSpec, *, what: str, against: str) -> None:
        """Raise `SpecMismatchError` naming every differing field when `other` differs."""
        diffs = self.differences(other)
        if diffs:
            detail = "; ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diffs.items())
            raise SpecMismatchError(
                f"{what} was made differently from {against} ({detail}); features made "
                f"differently cannot be mixed"
            )
