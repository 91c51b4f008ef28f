"""Batch prediction from a cache: a head + a feature cache of a folder -> each image's predicted
label and class probabilities.

A head trained on augmented views gets its probabilities averaged over each file's views
(`classifier.views`; off with `tta=False`). Files the extractor could not use get a row with the
reason instead of probabilities. Making or updating the folder's cache first (with the local or
Ray engine) is `featcache.predict_folder`'s: classifier imports no extraction engine
(issue 17, item 3; tests/test_layers.py).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from classifier.artifact import LoadedHead
from classifier.inference import probabilities
from classifier.views import Views, use_views
from extractor import FeatureSpec, SpecMismatchError, open_cache
from extractor.atomic import atomic_open
from extractor.walk import scan

logger = logging.getLogger(__name__)

#: Rows read from the cache per predict_proba call.
CHUNK_ROWS = 1024
IGNORED_REASON = ("not extracted: files beside sub-folders are left out (the cache layout treats "
                  "sub-folders as classes); move it into a sub-folder")


@dataclasses.dataclass
class Prediction:
    path: str
    label: str | None = None
    probabilities: list[float] | None = None
    error: str | None = None
    #: The guard's score (1.0 is the threshold); None for a head without a guard.
    ood_score: float | None = None
    #: True when the head's confidence was below its abstention threshold (label None).
    abstained: bool = False


def check_features(head: LoadedHead, spec: FeatureSpec, what: str) -> None:
    """Refuse features made otherwise than the head's (weights, input size, preprocessing,
    precision), or lacking one the head reads; the stored maps' layer may differ."""
    diffs = spec.feed_differences(head.spec)
    if diffs:
        detail = "; ".join(f"{k}: {h!r} vs {t!r}" for k, (t, h) in diffs.items())
        raise SpecMismatchError(f"{what} was made differently from head {head.name} ({detail}, "
                                "the head's vs theirs); features made differently cannot be mixed")
    missing = spec.missing(head.feature_names)
    if missing:
        raise SpecMismatchError(f"{what} lacks features head {head.name} reads: "
                                f"{', '.join(missing)}")


def predict_cache(
    head: LoadedHead, cache_path: Path, directory: Path, progress: bool = False,
    tta: bool = True,
) -> list[Prediction]:
    """One prediction per file in `directory` (sorted by path), from the cache's features,
    averaged over each file's views when the head was trained on views (`classifier.views`)."""
    from tqdm import tqdm

    listing = scan(directory)
    wanted = set(listing.labels)
    out: dict[str, Prediction] = {}
    with open_cache(cache_path) as cache:  # refuses a merged cache whose shards are gone
        check_features(head, cache.spec, f"cache {cache_path}")
        averaged = use_views(head.views, Views.from_attrs(cache.attrs), tta,
                             f"cache {cache_path}")
        paths = cache.paths
        views = cache.views
        # What the head reads and what its guard reads, in one read per chunk.
        names = list(dict.fromkeys([*head.feature_names, *(
            head.detector.feature_names if head.detector is not None else ())]))
        keep = [i for i, p in enumerate(paths) if p in wanted and (averaged or views[i] == 0)]
        # A file's rows (its views) are consecutive, as rows are sorted by path: cut chunks at
        # file boundaries, so a chunk holds every view of its files.
        bounds = [k for k in range(1, len(keep)) if paths[keep[k]] != paths[keep[k - 1]]]
        with tqdm(total=len(bounds) + bool(keep), unit="img", disable=not progress,
                  desc="predict") as bar:
            begin = 0
            for end in [*bounds, len(keep)]:
                if end - begin < CHUNK_ROWS and end < len(keep):
                    continue
                idx = keep[begin:end]
                feats = cache.read_named(names, idx)
                judged = probabilities(head, feats, np.asarray([paths[i] for i in idx], object))
                scores = judged.ood_scores
                for n, (j, row) in enumerate(zip(judged.first, judged.images, strict=True)):
                    path = paths[idx[j]]
                    abstain = head.abstain_below is not None and row.max() < head.abstain_below
                    out[path] = Prediction(
                        path, None if abstain else head.classes_[int(np.argmax(row))],
                        [float(v) for v in row],
                        ood_score=None if scores is None else float(scores[n]),
                        abstained=bool(abstain))
                bar.update(len(judged.first))
                begin = end
        for path, reason in cache.skipped:
            if path in wanted:
                out[path] = Prediction(path, error=reason)
    for path in wanted - set(out):
        out[path] = Prediction(path, error="no features in the cache (extraction incomplete)")
    for name in listing.ignored:
        out[name] = Prediction(name, error=IGNORED_REASON)
    return [out[p] for p in sorted(out)]


def write_predictions(
    predictions: Iterable[Prediction], classes: Sequence[str], out: Path,
    trust: bool = False,
) -> Path:
    """CSV (path, label, p_<class>..., error) or, for a `.jsonl` name, one JSON object a line.

    With `trust` (a head with a guard or an abstention threshold), also ood_score,
    in_distribution and abstained (after error in the CSV)."""
    def extra(p: Prediction) -> dict[str, Any]:
        if not trust:
            return {}
        ok = p.probabilities is not None
        return {"ood_score": p.ood_score,
                "in_distribution": None if p.ood_score is None else p.ood_score <= 1.0,
                "abstained": p.abstained if ok else None}

    with atomic_open(out, "w", newline="", encoding="utf-8") as fh:
        if out.suffix.lower() == ".jsonl":
            for p in predictions:
                by_class = (dict(zip(classes, p.probabilities, strict=True))
                            if p.probabilities is not None else None)
                fh.write(json.dumps({"path": p.path, "label": p.label,
                                     "probabilities": by_class, "error": p.error,
                                     **extra(p)}) + "\n")
        else:
            writer = csv.writer(fh)
            trust_columns = ["ood_score", "in_distribution", "abstained"] if trust else []
            writer.writerow(["path", "label", *(f"p_{c}" for c in classes), "error",
                             *trust_columns])
            for p in predictions:
                probs = ([repr(v) for v in p.probabilities] if p.probabilities is not None
                         else [""] * len(classes))
                cells = ["" if v is None else str(v).lower() if isinstance(v, bool) else repr(v)
                         for v in extra(p).values()]
                writer.writerow([p.path, p.label or "", *probs, p.error or "", *cells])
    return out
