"""The Python API: each function runs the same code as the command of the same name.

Errors are the commands' (each a ValueError, RuntimeError or OSError with a one-line message:
`extractor.planner.ExtractError`, `extractor.CacheError`, `classifier.errors.DataError`,
`classifier.errors.ArtifactError`, ...), raised rather than printed.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from classifier.artifact import LoadedHead
    from extractor.cache import FeatureCache
    from extractor.planner import Summary
    from featcache.image_classifier import ImageClassifier

PathLike = str | os.PathLike[str]


def extract(directory: PathLike, out: PathLike = "feats.h5", *, progress: bool = False,
            engine: str = "local", address: str | None = None, actors: int | None = None,
            shards_dir: PathLike | None = None, self_contained: bool = False,
            **options: Any) -> Summary:
    """`extract --dir DIRECTORY --out OUT`: create or bring up to date a feature cache.

    `options` are the command's flags, with underscores: `weights`, `image_size`, `layer`,
    `pooled_layers` (a tuple of layer names), `batch_size`, `workers`, `runtime`, `precision`,
    `calibration`, `threads`, `augment`, `augment_seed`, `augment_mode`, `checkpoint_every`.
    `engine="ray"` runs on a Ray cluster (`address`, `actors`, `shards_dir`, `self_contained`
    as `--engine ray` takes them). Returns the run's summary; `summary.total` is 0 when no
    image could be cached (the command exits 1 then).
    """
    from extractor.planner import Options
    from extractor.runner import run

    known = {f.name for f in dataclasses.fields(Options)} - {"directory", "out", "progress"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"extract() got unknown options {', '.join(unknown)}; options are "
                        f"{', '.join(sorted(known))}")
    if "pooled_layers" in options and options["pooled_layers"] is not None:
        options["pooled_layers"] = tuple(options["pooled_layers"])
    opts = Options(directory=Path(directory), out=Path(out), progress=progress, **options)
    if engine == "ray":
        from extractor.ray_engine import RayOptions
        from extractor.ray_engine import run as run_ray

        return run_ray(opts, RayOptions(address, actors,
                                        None if shards_dir is None else Path(shards_dir),
                                        self_contained))
    if engine != "local":
        raise ValueError(f"engine must be local or ray; got engine={engine!r}")
    return run(opts)


def open_cache(path: PathLike) -> FeatureCache:
    """A cache for reading (`with featcache.open_cache("train.h5") as cache: ...`): datasets
    stay on disk until read (`read_named`, `iter_named`, `labels`, `paths`, `views`, ...).
    A merged Ray cache whose shards are gone is refused (its rows would read as NaN)."""
    from extractor.cache import open_cache as _open

    return _open(path)


def train_head(cache: PathLike, out: PathLike, *, head: str = "logreg",
               val_cache: PathLike | None = None, val_split: float = 0.2, seed: int = 0,
               cv: int = 5, tta: bool = True, overwrite: bool = False,
               **params: Any) -> ImageClassifier:
    """`train-head`: train a head on a cache, save it at `out`, and return it loaded.

    `params` are the head's own settings, as `train-head`'s flags name them (`C`, `layers`,
    `pooling`, `scaling`, `class_weight`, `kernel`, `learning_rate`, `epochs`, ...); for
    logreg, svm and auto, those left out are chosen by `cv`-fold cross-validation.
    `overwrite=True` is `--force`. The result predicts images (`ImageClassifier.predict`);
    its metadata holds the metrics and the CV choice.
    """
    from classifier.training import train

    path = train(cache, out, head=head, val_cache=val_cache, val_split=val_split, seed=seed,
                 params=params, overwrite=overwrite, cv=cv, tta=tta)
    return load_head(path)


def load_head(path: PathLike, *, weights: str | os.PathLike[str] | None = None,
              runtime: str = "auto", batch_size: int = 16, threads: int | None = None,
              tta: bool = True) -> ImageClassifier:
    """A saved head, ready to classify images: `.predict(images)`.

    The conv base it needs (its layer, input size, pooled layers, precision and int8 model) is
    built on the first prediction from `weights` (default: $FEATCACHE_WEIGHTS, else
    imagenet), which must be the ones the head was trained on. `tta=False` predicts each
    image alone even when the head was trained on augmented views.
    """
    from classifier.artifact import load_head as _load
    from featcache.image_classifier import ImageClassifier

    return ImageClassifier(_load(path), weights=weights, runtime=runtime,
                           batch_size=batch_size, threads=threads, tta=tta)


def evaluate(head: PathLike | ImageClassifier | LoadedHead, cache: PathLike, *,
             tta: bool = True) -> dict[str, Any]:
    """`evaluate --json`: the head's metrics on a labelled cache (accuracy, per_class,
    roc_auc, confusion_matrix, ...), from the cache's features (no conv base runs)."""
    from classifier.evaluation import evaluate as _evaluate

    path = head if isinstance(head, str | os.PathLike) else head.path
    return _evaluate(path, cache, tta=tta)
