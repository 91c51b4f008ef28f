"""Choosing a head's settings by stratified k-fold cross-validation on the training cache.

Settings are never chosen on the validation set: one split of a few hundred images cannot tell
83% from 82%, and a setting picked on it falls back on unseen images. Instead `train-head`
scores every candidate setting on k folds of the training cache and keeps the best mean:

- folds are drawn over images, stratified by class (`StratifiedGroupKFold`): all augmented
  views of an image fall in the same fold, so no view of a scored image is ever trained on;
- a candidate is scored as it will be used: trained on every row (views included) of the other
  folds, then its probabilities averaged over each held-out image's views when the head will
  average at prediction time (`classifier.views`), else on each image alone;
- the score is accuracy over images; ties go to the lower log loss.

Logistic regression is fitted along its C grid with warm starts, so a grid costs little more
than its largest C. The validation set (`--val-cache`) is used once, after the choice, for the
report.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from classifier.data import Subset
from classifier.errors import DataError
from classifier.heads import Head, SklearnHead
from classifier.registry import make_head
from classifier.views import average
from extractor import FeatureSpec

logger = logging.getLogger(__name__)

DEFAULT_FOLDS = 5
#: Inverse regularisation strengths tried for logistic regression. On ELPV's 714 training
#: images the CV optimum sat at 0.01-0.1 for every layer set (BENCHMARKS.md); the grid spans a
#: decade either side.
LOGREG_C = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
SVM_C = (1.0, 3.0, 10.0)
#: Layer sets tried, each only where the cache holds its pooled vectors.
LAYER_SETS: tuple[tuple[str, ...], ...] = (
    ("block5_pool",),
    ("block4_pool",),
    ("block4_pool", "block5_pool"),
    ("block3_pool", "block4_pool", "block5_pool"),
)
#: Head kinds `--head auto` chooses among (dense heads train for minutes per fit; not tried).
AUTO_KINDS = ("logreg", "svm")
SELECTABLE = ("logreg", "svm", "auto")


@dataclasses.dataclass(frozen=True)
class Candidate:
    kind: str
    params: dict[str, Any]

    def label(self) -> str:
        parts = [self.kind]
        layers = self.params.get("layers")
        if layers:
            parts.append("+".join(str(layer).removesuffix("_pool") for layer in layers))
        for key in ("pooling", "scaling", "C"):
            if key in self.params:
                parts.append(f"{key}={self.params[key]}")
        return " ".join(parts)


@dataclasses.dataclass
class Score:
    candidate: Candidate
    accuracy: list[float]
    log_loss: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracy))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracy))

    def to_dict(self) -> dict[str, Any]:
        from classifier.heads import json_params

        return {
            "kind": self.candidate.kind,
            "params": json_params(self.candidate.params),
            "cv_accuracy_mean": round(self.mean, 6),
            "cv_accuracy_std": round(self.std, 6),
            "cv_log_loss_mean": round(float(np.mean(self.log_loss)), 6),
            "cv_accuracy_folds": [round(a, 6) for a in self.accuracy],
        }


def candidates(kind: str, fixed: Mapping[str, Any], spec: FeatureSpec) -> list[Candidate]:
    """Every setting to score: the grids of the free parameters, `fixed` ones held."""
    kinds = AUTO_KINDS if kind == "auto" else (kind,)
    if fixed.get("layers"):
        layer_sets: list[Any] = [tuple(fixed["layers"])]
    elif fixed.get("pooling") == "flatten":
        layer_sets = [None]
    else:
        available = set(spec.available_names())
        layer_sets = [s for s in LAYER_SETS
                      if all(f"{layer}/avg" in available for layer in s)]
        if not layer_sets:  # a cache of another main layer without stored pooled vectors
            layer_sets = [(spec.layer,)]
    out = []
    for k in kinds:
        grid = LOGREG_C if k == "logreg" else SVM_C
        cs = [fixed["C"]] if "C" in fixed else list(grid)
        for layers, c in itertools.product(layer_sets, cs):
            params = {key: v for key, v in fixed.items() if key not in ("C", "layers", "kernel")
                      or (key == "kernel" and k == "svm")}
            params.update(C=float(c), layers=layers)
            out.append(Candidate(k, params))
    return out


def usable_folds(subset: Subset, k: int) -> int:
    """`k`, or fewer when a class has fewer than `k` images (each fold needs one of each);
    0 when a class has a single image (no cross-validation possible)."""
    plain = np.flatnonzero(subset.views == 0)
    counts = np.bincount(subset.labels[plain])
    smallest = int(counts[counts > 0].min())
    if smallest >= k:
        return k
    usable = smallest if smallest >= 2 else 0
    logger.warning("a class has only %d training images: cross-validating with %s instead of "
                   "%d folds", smallest, f"{usable}" if usable else "no selection (0)", k)
    return usable


def folds(subset: Subset, k: int, seed: int) -> list[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """(train rows, held-out rows) per fold, positions in `subset`; every view of an image
    falls on the same side as the image, and so do files with the same bytes (copies of one
    image under two names would otherwise be trained on and scored as if unseen)."""
    from sklearn.model_selection import StratifiedGroupKFold

    plain = np.flatnonzero(subset.views == 0)
    if usable_folds(subset, k) != k:
        raise DataError(f"cannot cross-validate with {k} folds: a class has fewer images")
    groups = _content_groups(subset)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    out = []
    for tr, te in splitter.split(plain, subset.labels[plain], groups[plain]):
        tr_rows = np.flatnonzero(np.isin(groups, groups[plain[tr]]))
        te_rows = np.flatnonzero(np.isin(groups, groups[plain[te]]))
        out.append((tr_rows, te_rows))
    return out


def _content_groups(subset: Subset) -> NDArray[np.int64]:
    """One number per row, shared by the rows of files with equal bytes (SHA-256); by file
    where a cache records no hashes (caches written from arrays)."""
    from extractor import open_cache

    with open_cache(subset.path) as cache:
        sha = np.asarray(cache.sha256, dtype=object)[subset.indices]
    if any(not s for s in sha):
        return subset.groups
    _, groups = np.unique(sha, return_inverse=True)
    return np.asarray(groups, dtype=np.int64)


def _score(model: Any, X: NDArray[np.float32], labels: NDArray[np.int64], subset: Subset,
           rows: NDArray[np.int64], tta: bool) -> tuple[float, float]:
    """Accuracy and log loss over the images of `rows`, averaged over views when `tta`."""
    from sklearn.metrics import log_loss

    if not tta:
        rows = rows[subset.views[rows] == 0]
    proba = np.asarray(model.predict_proba(X[rows]), dtype=np.float64)
    images, first = average(proba, subset.groups[rows])
    truth = labels[rows][first]
    classes = np.asarray(model.classes_)
    predicted = classes[np.argmax(images, axis=1)]
    return (float(np.mean(predicted == truth)),
            float(log_loss(truth, images, labels=classes)))


def cross_validate(
    cands: Sequence[Candidate], subset: Subset, spec: FeatureSpec, k: int = DEFAULT_FOLDS,
    seed: int = 0, tta: bool = False,
) -> list[Score]:
    """Score every candidate on the same k folds of `subset`."""
    t0 = time.perf_counter()
    splits = folds(subset, k, seed)
    heads = [make_head(c.kind, **c.params) for c in cands]
    names = list(dict.fromkeys(n for h in heads for n in h.use_features(spec)))
    features, labels = subset.load(names=names)
    logger.info("cross-validating %d settings on %d images (%d rows, %d folds%s)",
                len(cands), len(np.unique(subset.groups)), len(subset), k,
                ", averaging over views" if tta else "")
    scores = [Score(c, [], []) for c in cands]
    # Candidates that differ only in C share their input: reduce once, fit along the C path.
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(cands):
        key = repr((c.kind, sorted((p, repr(v)) for p, v in c.params.items() if p != "C")))
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        head = heads[members[0]]
        X = head.reduce(features)
        by_c = sorted(members, key=lambda i: float(cands[i].params["C"]))
        for tr, te in splits:
            for i, model in _fit_path([heads[i] for i in by_c], X[tr], labels[tr]):
                acc, loss = _score(model, X, labels, subset, te, tta)
                scores[by_c[i]].accuracy.append(acc)
                scores[by_c[i]].log_loss.append(loss)
        best = max((scores[i] for i in members), key=lambda s: s.mean)
        logger.info("  %-40s best CV accuracy %.4f ± %.4f", best.candidate.label(), best.mean,
                    best.std)
    logger.info("cross-validation took %.1fs", time.perf_counter() - t0)
    return scores


def _fit_path(heads: Sequence[Head], X: NDArray[np.float32], y: NDArray[np.int64]) -> Any:
    """Yield (index, fitted model) for heads differing only in C, in increasing C.

    Logistic regression reuses the previous solution as its starting point (warm start): the
    same optimum, reached in a fraction of the iterations.
    """
    pipeline = None
    for i, head in enumerate(heads):
        if isinstance(head, SklearnHead) and head.kind == "logreg":
            head._validate()
            if pipeline is None:
                pipeline = head._pipeline()
                pipeline.set_params(clf__warm_start=True)
            pipeline.set_params(clf__C=head.C)
            pipeline.fit(X, y)
            yield i, pipeline
        else:
            yield i, head.fit(X, y)


def choose(scores: Sequence[Score]) -> Score:
    """The best mean accuracy; ties go to the lower mean log loss."""
    return max(scores, key=lambda s: (round(s.mean, 9), -float(np.mean(s.log_loss))))
