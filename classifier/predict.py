"""Batch prediction: every image under a folder -> its predicted label and class probabilities.

Features come from a feature cache of the folder, made (or brought up to date) with the
extractor's local or Ray engine using the head's feature settings, so a second run over the same
folder reuses the cache and runs no model. Files the extractor could not use get a row with the
reason instead of probabilities.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from classifier.artifact import LoadedHead
from extractor import open_cache
from extractor.backbone import make_spec
from extractor.runner import Options, Summary
from extractor.walk import scan
from extractor.weights import resolve_weights

if TYPE_CHECKING:
    from extractor.ray_engine import RayOptions

logger = logging.getLogger(__name__)

#: Rows read from the cache per predict_proba call.
CHUNK_ROWS = 1024
CACHE_DIRNAME = ".featcache"
IGNORED_REASON = ("not extracted: files beside sub-folders are left out (the cache layout treats "
                  "sub-folders as classes); move it into a sub-folder")


@dataclasses.dataclass
class Prediction:
    path: str
    label: str | None = None
    probabilities: list[float] | None = None
    error: str | None = None


def default_cache(directory: Path, head: LoadedHead) -> Path:
    """`DIR/.featcache/<settings>.h5`: hidden, so the folder scan skips it; one per settings."""
    s = head.spec
    int8 = f"-int8-{s.quantized_sha256[:12]}" if s.precision == "int8" else ""
    name = f"{s.backbone}-{s.layer}-{s.input_size}-{s.weights_sha256[:12]}{int8}.h5"
    return directory / CACHE_DIRNAME / name


def extract_for_head(
    head: LoadedHead,
    directory: Path,
    cache: Path,
    *,
    weights: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
    engine: str = "local",
    runtime: str = "auto",
    ray_options: RayOptions | None = None,
    precision: str | None = None,
) -> Summary:
    """Bring `cache` up to date with `directory`, with the head's feature settings.

    `precision` defaults to the head's; int8 uses the very int8 model the head was trained with
    (found by its hash)."""
    precision = precision or head.spec.precision
    if precision != head.spec.precision:
        raise ValueError(f"--precision {precision}: head {head.name!r} was trained on "
                         f"{head.spec.precision} features; leave out --precision or pass "
                         f"--precision {head.spec.precision}")
    weights_path = resolve_weights(weights)
    qsha = head.spec.quantized_sha256 or None
    if precision == "int8":
        runtime = "onnxruntime" if runtime == "auto" else runtime
    spec = make_spec(weights_path, head.spec.layer, head.spec.input_size, precision=precision,
                     quantized_sha256=qsha)
    head.spec.check_compatible(spec, what=f"weights {weights_path}", against=f"head {head.name}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    opts = Options(directory=directory, out=cache, weights=weights,
                   image_size=head.spec.input_size, layer=head.spec.layer,
                   batch_size=batch_size, progress=progress, runtime=runtime,
                   precision=precision, quantized_sha256=qsha)
    if engine == "ray":
        from extractor.ray_engine import run as run_ray

        return run_ray(opts, ray_options)
    from extractor.runner import run

    return run(opts)


def predict_cache(
    head: LoadedHead, cache_path: Path, directory: Path, progress: bool = False
) -> list[Prediction]:
    """One prediction per file in `directory` (sorted by path), from the cache's features."""
    from tqdm import tqdm

    from extractor.shards import check_sources

    check_sources(cache_path)  # a merged cache without its shards would predict from NaN
    listing = scan(directory)
    wanted = set(listing.labels)
    out: dict[str, Prediction] = {}
    with open_cache(cache_path) as cache:
        head.spec.check_compatible(cache.spec, what=f"cache {cache_path}",
                                   against=f"head {head.name}")
        paths = cache.paths
        views = cache.views  # augmented views are for training: predict from the image itself
        keep = [i for i, p in enumerate(paths) if p in wanted and views[i] == 0]
        with tqdm(total=len(keep), unit="img", disable=not progress, desc="predict") as bar:
            for start in range(0, len(keep), CHUNK_ROWS):
                idx = keep[start : start + CHUNK_ROWS]
                feats, _ = cache.read(idx)
                proba = np.asarray(head.predict_proba(feats), dtype=np.float64)
                for i, row in zip(idx, proba, strict=True):
                    out[paths[i]] = Prediction(paths[i], head.classes_[int(np.argmax(row))],
                                               [float(v) for v in row])
                bar.update(len(idx))
        for path, reason in cache.skipped:
            if path in wanted:
                out[path] = Prediction(path, error=reason)
    for path in wanted - set(out):
        out[path] = Prediction(path, error="no features in the cache (extraction incomplete)")
    for name in listing.ignored:
        out[name] = Prediction(name, error=IGNORED_REASON)
    return [out[p] for p in sorted(out)]


def write_predictions(
    predictions: Iterable[Prediction], classes: Sequence[str], out: Path
) -> Path:
    """CSV (path, label, p_<class>..., error) or, for a `.jsonl` name, one JSON object a line."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        if out.suffix.lower() == ".jsonl":
            for p in predictions:
                by_class = (dict(zip(classes, p.probabilities, strict=True))
                            if p.probabilities is not None else None)
                fh.write(json.dumps({"path": p.path, "label": p.label,
                                     "probabilities": by_class, "error": p.error}) + "\n")
        else:
            writer = csv.writer(fh)
            writer.writerow(["path", "label", *(f"p_{c}" for c in classes), "error"])
            for p in predictions:
                probs = ([repr(v) for v in p.probabilities] if p.probabilities is not None
                         else [""] * len(classes))
                writer.writerow([p.path, p.label or "", *probs, p.error or ""])
    os.replace(tmp, out)
    return out
