"""featcache from Python: the same steps as the commands, for notebooks and pipelines.

    import featcache

    featcache.extract("data/train", "train.h5")             # -> extractor.planner.Summary
    featcache.extract("data/validation", "val.h5")
    head = featcache.train_head("train.h5", "heads/elpv", val_cache="val.h5")
    head.predict(["cell1.png", "cell2.png"]).labels          # image files, bytes, PIL, arrays
    featcache.evaluate(head, "val.h5")["accuracy"]
    featcache.describe("train.h5")                           # what `featcache info` prints

Every name is imported on first use, so `import featcache` is instant and loads neither
TensorFlow nor scikit-learn; nothing shows a progress bar unless asked (`progress=True`), and
nothing configures logging (the commands do, in `extractor.console`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__: str

if TYPE_CHECKING:
    from classifier.heads import LogRegHead, SVMHead
    from extractor.cache import FeatureCache
    from extractor.planner import Summary
    from featcache.api import evaluate, extract, load_head, open_cache, train_head
    from featcache.image_classifier import ImageClassifier, Predictions
    from featcache.info import describe

_LAZY = {
    "extract": "featcache.api",
    "open_cache": "featcache.api",
    "train_head": "featcache.api",
    "load_head": "featcache.api",
    "evaluate": "featcache.api",
    "describe": "featcache.info",
    "ImageClassifier": "featcache.image_classifier",
    "Predictions": "featcache.image_classifier",
    "Summary": "extractor.planner",
    "FeatureCache": "extractor.cache",
    "LogRegHead": "classifier.heads",
    "SVMHead": "classifier.heads",
}

__all__ = [
    "FeatureCache",
    "ImageClassifier",
    "LogRegHead",
    "Predictions",
    "SVMHead",
    "Summary",
    "__version__",
    "describe",
    "evaluate",
    "extract",
    "load_head",
    "open_cache",
    "train_head",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        import extractor

        globals()[name] = value = extractor.__version__
        return value
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'featcache' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
