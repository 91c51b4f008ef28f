"""Named features: one forward pass of the conv base -> the maps and pooled vectors a spec names.

A conv-base call returns a `dict` from feature names to arrays (see `extractor.spec`):

    "block5_pool"        (N, 4, 4, 512)  the maps of the spec's main layer
    "block3_pool/avg"    (N, 256)        global average pooling of a layer in `pooled_layers`
    "block3_pool/max"    (N, 256)        global max pooling of it
    ...

`from_maps` is the one function that turns layer outputs into these, shared by `extract`, the
Ray engine and the service, so stored and served features cannot drift.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from numpy.typing import NDArray

from extractor.spec import POOLS, FeatureSpec, feature_name, parse_feature_name
from extractor.vgg16 import feature_shape

Features = dict[str, NDArray[np.float32]]

#: Layers whose pooled vectors `extract` stores by default: logistic regression on the three
#: together beat any single layer in cross-validation on training data (BENCHMARKS.md).
DEFAULT_POOLED_LAYERS = ("block3_pool", "block4_pool", "block5_pool")


def pool(maps: NDArray[np.floating], how: str) -> NDArray[np.float32]:
    """(N, H, W, C) maps -> (N, C) global `avg` or `max` pooled vectors."""
    x = np.asarray(maps, dtype=np.float32)
    if how == "avg":
        return x.mean(axis=(1, 2), dtype=np.float32)
    if how == "max":
        return x.max(axis=(1, 2))
    raise ValueError(f"pooling must be one of {', '.join(POOLS)}; got {how!r}")


def layers_needed(spec: FeatureSpec) -> tuple[str, ...]:
    """The conv-base layers whose outputs make the features `spec` stores."""
    return tuple(dict.fromkeys([spec.layer, *spec.pooled_layers]))


def from_maps(maps: Mapping[str, NDArray[np.float32]], spec: FeatureSpec) -> Features:
    """Layer outputs (`layers_needed(spec)` -> maps) -> the named features of `spec`."""
    out: Features = {spec.layer: np.asarray(maps[spec.layer], dtype=np.float32)}
    for layer in spec.pooled_layers:
        for how in POOLS:
            out[feature_name(layer, how)] = pool(maps[layer], how)
    return out


def select(features: Mapping[str, NDArray[np.float32]], names: Iterable[str],
           maps_layer: str) -> Features:
    """The named features, deriving `<maps_layer>/avg|max` from the maps when not present."""
    out: Features = {}
    for name in names:
        if name in features:
            out[name] = features[name]
            continue
        layer, how = parse_feature_name(name)
        if how is None or layer != maps_layer or maps_layer not in features:
            raise KeyError(f"feature {name!r} is not available (have: {', '.join(features)})")
        out[name] = pool(features[maps_layer], how)
    return out


def empty(spec: FeatureSpec) -> Features:
    """Zero rows of every feature `spec` stores (for batches with no usable image)."""
    return {name: np.zeros((0, *shape), np.float32) for name, shape in shapes(spec).items()}


def shapes(spec: FeatureSpec) -> dict[str, tuple[int, ...]]:
    """The per-row shape of every feature `spec` stores (the maps' as the spec records it)."""
    out = {name: shape_of(name, spec.input_size) for name in spec.stored_names()}
    out[spec.layer] = tuple(spec.feature_shape)
    return out


def shape_of(name: str, image_size: int) -> tuple[int, ...]:
    """The per-row shape of a named feature at this input size: (H, W, C) maps or (C,)."""
    layer, how = parse_feature_name(name)
    maps = feature_shape(layer, image_size)
    return maps if how is None else (maps[-1],)


def rows(features: Mapping[str, NDArray[np.float32]]) -> int:
    """How many rows (images) named features hold; refuses features of unequal lengths."""
    counts = {len(v) for v in features.values()}
    if len(counts) != 1:
        raise ValueError(f"named features of unequal lengths: "
                         f"{ {k: len(v) for k, v in features.items()} }")
    return counts.pop()


def row(features: Mapping[str, NDArray[np.float32]], i: int) -> Features:
    """Row `i` of named features, keeping the row axis (each array of length 1)."""
    return {k: v[i : i + 1] for k, v in features.items()}


def stack(items: Iterable[Mapping[str, NDArray[np.float32]]]) -> Features:
    """Rows of named features (each a mapping of arrays) joined along the row axis."""
    items = list(items)
    return {k: np.concatenate([it[k] for it in items]) for k in items[0]}
