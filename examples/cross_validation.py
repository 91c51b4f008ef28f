"""featcache heads are scikit-learn estimators: cross-validate one on a cache's pooled vectors.

    python examples/cross_validation.py CACHE.h5
"""

from __future__ import annotations

import sys

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_score

import featcache


def main(cache_path: str) -> dict[float, float]:
    names = ["block4_pool/avg", "block4_pool/max", "block5_pool/avg", "block5_pool/max"]
    with featcache.open_cache(cache_path) as cache:
        images = np.flatnonzero(cache.views == 0)  # the images, not their augmented views
        named = cache.read_named(names, images)
        y = cache.labels[images]
    X = np.concatenate([named[name] for name in names], axis=1)  # (images, 2048)
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    means = {}
    for C in (0.01, 0.1, 1.0):
        scores = cross_val_score(featcache.LogRegHead(C=C), X, y, cv=folds)
        print(f"C={C}: accuracy {scores.mean():.3f} ± {scores.std():.3f}")
        means[C] = float(scores.mean())
    return means


if __name__ == "__main__":
    main(sys.argv[1])
