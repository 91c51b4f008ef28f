"""The head artifact: one directory holding everything needed to serve a trained head.

    heads/NAME/
        metadata.json          format, kind, params, classes, spec, metrics, data sizes,
                               versions, created, model file name and its SHA-256
        model.keras            dense heads (Keras format, loaded with safe_mode=True)
        model.skops            scikit-learn heads (skops, loaded with an explicit type allowlist)
        ood.npz                the out-of-distribution guard's arrays (classifier/ood.py), when
                               fitted; numpy only, read with allow_pickle=False
        confusion_matrix.png   on the validation set
        training_curves.png    dense heads: accuracy and loss per epoch, training vs validation

Loading never runs code from the artifact: skops refuses any type outside the allowlist before
instantiating anything, the loaded pipeline must have exactly the expected structure, and Keras's
safe mode refuses Lambda layers. The model file's SHA-256 is checked against the metadata first,
so a damaged or edited file is reported as such.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import platform
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from classifier import plots
from classifier.errors import ArtifactError, ModelHashError
from classifier.heads import Head, json_params
from classifier.ood import OODDetector
from classifier.views import Views
from extractor import FeatureSpec
from extractor.atomic import atomic_dir

logger = logging.getLogger(__name__)

FORMAT = "featcache-head/1"
METADATA = "metadata.json"
CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "training_curves.png"


def _head_classes() -> dict[str, type[Head]]:
    from classifier.registry import HEADS

    return HEADS


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("featcache", "numpy", "scikit-learn", "skops", "keras", "tensorflow-cpu",
                 "tensorflow", "h5py"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def save_head(
    head: Head,
    out_dir: str | os.PathLike[str],
    *,
    spec: FeatureSpec,
    class_names: Sequence[str],
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    detector: OODDetector | None = None,
) -> Path:
    """Write a fitted head as an artifact directory; return its path.

    `class_names` are the cache's class names (indexed by the labels the head was trained on);
    `metrics` maps a set name ("train", "validation") to `classification_metrics` output;
    `extra` adds keys to the metadata (data sizes, timings). The directory is built under a
    temporary name and renamed into place (`extractor.atomic.atomic_dir`), so a crash never
    leaves half an artifact, and a failure leaves nothing behind.
    """
    out = Path(out_dir)
    check_replaceable(out, overwrite)
    classes = [int(c) for c in head.classes_]
    names = [class_names[c] for c in classes]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model_path = head.save_model(tmp)
        files = [model_path.name]
        metrics = dict(metrics or {})
        guard: dict[str, Any] = {}
        if detector is not None:
            guard_path = detector.save(tmp)
            files.append(guard_path.name)
            guard = {"ood": {**detector.to_dict(), "sha256": _sha256(guard_path)}}
        if head.history_:
            plots.training_curves(head.history_, tmp / CURVES_PNG)
            files.append(CURVES_PNG)
        for which in ("validation", "train"):
            if which in metrics and "confusion_matrix" in metrics[which]:
                title = f"{head.kind} head, {which} set"
                plots.confusion_matrix(metrics[which]["confusion_matrix"], names,
                                       tmp / CONFUSION_PNG, title)
                files.append(CONFUSION_PNG)
                break
        metadata: dict[str, Any] = {
            "format": FORMAT,
            "name": out.name,
            "kind": head.kind,
            "params": json_params(head.get_params()),
            "classes": names,
            "class_indices": classes,
            "spec": spec.to_dict(),
            "metrics": metrics,
            "history": head.history_,
            "model_file": model_path.name,
            "model_sha256": _sha256(model_path),
            "files": files,
            "versions": library_versions(),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            **guard,
            **dict(extra or {}),
        }
        (tmp / METADATA).write_text(json.dumps(metadata, indent=2, allow_nan=False) + "\n")
        check_replaceable(out, overwrite)  # again: the folder may have changed while training
    logger.info("saved %s head to %s", head.kind, out)
    return out


def check_replaceable(out: Path, overwrite: bool) -> None:
    """Refuse to write a head at `out` unless it is free, or `overwrite` and it holds a head.

    `--force` replaces a previous head, never anything else that happens to be at `--out`:
    a folder without head metadata (your images, another tool's output) or a file is refused,
    with nothing removed. An empty folder holds nothing to lose and is replaced.
    """
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise ArtifactError(f"{out} already exists; pass overwrite=True (--force) to replace it")
    if out.is_symlink() or not out.is_dir():
        raise ArtifactError(f"{out} is not a head artifact (not a directory); refusing to "
                            "replace it: choose another output path")
    if not any(out.iterdir()):
        return
    if not (out / METADATA).is_file():
        why = f"no {METADATA}"
    else:
        try:
            read_metadata(out)
            return
        except ArtifactError:
            why = f"its {METADATA} is not featcache head metadata"
    raise ArtifactError(f"{out} is not a head artifact ({why}); refusing to replace it and "
                        "its files: choose another output path")


class LoadedHead:
    """A head ready to serve: `predict_proba(features)` with columns in `classes_` order.

    `features` is a mapping of named features holding at least `feature_names` (what a cache
    or `extractor.backbone.ConvBase` gives), or the main maps as an array.
    """

    def __init__(self, path: Path, head: Head, metadata: dict[str, Any],
                 detector: OODDetector | None = None) -> None:
        self.path = path
        self.name: str = path.name
        self.head = head
        self.metadata = metadata
        self.kind: str = metadata["kind"]
        self.classes_: list[str] = list(metadata["classes"])
        self.spec: FeatureSpec = FeatureSpec.from_dict(metadata["spec"])
        #: The named features the head reads (heads saved before they were recorded: derived
        #: from their parameters, which read the maps of the cache's layer).
        self.feature_names: list[str] = list(metadata.get("features")
                                             or head.feature_names(self.spec))
        head.feature_names_ = self.feature_names
        #: The views the head was trained on, which it averages over at prediction time.
        self.views: Views = Views.from_dict(metadata.get("views")) if metadata.get(
            "tta", True) else Views()
        #: The out-of-distribution guard (None: a head trained without one, or before them).
        self.detector = detector
        #: Below this confidence (highest probability) the head abstains; None: never.
        abstention = metadata.get("abstention") or {}
        self.abstain_below: float | None = (float(abstention["threshold"])
                                            if "threshold" in abstention else None)

    @property
    def has_guard(self) -> bool:
        """Whether the head has an out-of-distribution guard (`classifier.ood`)."""
        return self.detector is not None

    def ood_scores(self, features: Mapping[str, Any]) -> NDArray[np.float64] | None:
        """(N,) out-of-distribution scores (1.0 is the threshold; above: out of
        distribution), or None for a head without a detector."""
        if self.detector is None:
            return None
        return self.detector.scores(features)

    def predict_proba(self, features: Any) -> NDArray[np.float64]:
        if isinstance(features, Mapping):
            missing = [n for n in self.feature_names if n not in features]
            if missing:
                raise ValueError(f"head {self.name!r} reads features {', '.join(missing)}, "
                                 f"which were not given (got {', '.join(features)})")
            n = len(features[self.feature_names[0]])
        else:
            from_maps = {self.spec.layer, f"{self.spec.layer}/avg", f"{self.spec.layer}/max"}
            if not set(self.feature_names) <= from_maps:
                raise ValueError(
                    f"head {self.name!r} reads {', '.join(self.feature_names)}: pass a mapping "
                    f"of named features (ConvBase's output, FeatureCache.read_named), not maps"
                )
            x = np.asarray(features, dtype=np.float32)
            if x.shape[1:] != tuple(self.spec.feature_shape):
                raise ValueError(
                    f"features must have shape (N, "
                    f"{', '.join(map(str, self.spec.feature_shape))}) for head {self.name!r}; "
                    f"got shape {x.shape}"
                )
            features, n = x, len(x)
        if n == 0:
            return np.zeros((0, len(self.classes_)), np.float64)
        return self.head.predict_proba(features)

    def __repr__(self) -> str:
        return f"LoadedHead(name={self.name!r}, kind={self.kind!r}, classes={self.classes_!r})"


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    directory = Path(path)
    meta_path = directory / METADATA
    if not directory.is_dir():
        raise ArtifactError(f"no head artifact at {directory} (not a directory)")
    try:
        metadata = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{directory} is not a head artifact (no {METADATA})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{meta_path} is not readable JSON ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ArtifactError(f"{meta_path} is not head metadata (format != {FORMAT!r})")
    return metadata


def load_head(path: str | os.PathLike[str]) -> LoadedHead:
    """Load an artifact written by `save_head`; raises `ArtifactError` (a ValueError) if unsafe."""
    directory = Path(path)
    metadata = read_metadata(directory)
    try:
        kind = metadata["kind"]
        cls = _head_classes()[kind]
        model_file = metadata["model_file"]
        classes = [int(c) for c in metadata["class_indices"]]
        names = list(metadata["classes"])
        FeatureSpec.from_dict(metadata["spec"])
        params = dict(metadata["params"])
        expected_sha = metadata["model_sha256"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{directory / METADATA} is incomplete or invalid ({exc!r})") from None
    if model_file != cls.model_file or len(names) != len(classes) or len(names) < 2:
        raise ArtifactError(f"{directory / METADATA} is inconsistent (model_file={model_file!r}, "
                            f"classes={names!r})")
    model_path = directory / model_file
    if not model_path.is_file():
        raise ArtifactError(f"{directory} is missing its model file {model_file}")
    if _sha256(model_path) != expected_sha:
        raise ModelHashError(
            f"{model_path} does not match the SHA-256 in its metadata: the file was damaged or "
            "modified after training; refusing to load it"
        )
    try:
        head = cls.load_model(directory, params, classes)
    except ArtifactError:
        raise
    except TypeError as exc:  # unknown or missing params
        raise ArtifactError(f"{directory / METADATA} has invalid params ({exc})") from None
    return LoadedHead(directory, head, metadata, _load_detector(directory, metadata))


def _load_detector(directory: Path, metadata: Mapping[str, Any]) -> OODDetector | None:
    """The head's out-of-distribution guard, checked against its SHA-256; None without one."""
    guard = metadata.get("ood")
    if not guard:
        return None
    if not isinstance(guard, dict):
        raise ArtifactError(f"{directory / METADATA}: 'ood' must be an object")
    path = directory / str(guard.get("file", "ood.npz"))
    if not path.is_file():
        raise ArtifactError(f"{directory} is missing its detector file {path.name}")
    if _sha256(path) != guard.get("sha256"):
        raise ArtifactError(f"{path} does not match the SHA-256 in its metadata: the file was "
                            "damaged or modified after training; refusing to load it")
    return OODDetector.load(directory, guard)
