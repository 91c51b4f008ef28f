"""How a (H, W, C) feature map becomes the vector a head sees."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

#: flatten keeps position (H*W*C values); avg / max pool over positions (C values); avgmax
#: concatenates both (2*C values).
POOLINGS = ("flatten", "avg", "max", "avgmax")


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ValueError(
            f"pooling must be one of {', '.join(POOLINGS)}; got pooling={pooling!r}"
        )
    return pooling


def pool(features: NDArray[np.floating], pooling: str) -> NDArray[np.float32]:
    """(N, H, W, C) maps -> (N, D) float32 vectors. 2-D input is returned as already pooled."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim == 2:
        return x
    if x.ndim != 4:
        raise ValueError(
            f"features must be (N, H, W, C) maps or (N, D) pooled rows; got shape {x.shape}"
        )
    check_pooling(pooling)
    if pooling == "flatten":
        return x.reshape(len(x), -1)
    if pooling == "avg":
        return x.mean(axis=(1, 2))
    if pooling == "max":
        return x.max(axis=(1, 2))
    return np.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=1)
