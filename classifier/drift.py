"""Drift: does a new cache still look like the head's training images?

Three measures, each from what the head carries (its guard's arrays, `classifier.ood`), so the
training cache need not be at hand:
- the share of the new images the guard flags as out of distribution (about its false-alarm
  rate when nothing changed);
- the head's predicted-class mix on the new images against the training set's class prior;
- a two-sample test on the pooled vectors: the squared maximum mean discrepancy (MMD, RBF
  kernel at the median distance) between the guard's reference sample of training vectors
  and the new ones, with a permutation p-value. Both samples are subsampled to `max_rows`
  each, so the cost stays bounded (one kernel matrix of 2 x max_rows squared entries).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from classifier.artifact import load_head
from classifier.errors import DataError
from extractor import open_cache

DEFAULT_PERMUTATIONS = 500
DEFAULT_MAX_ROWS = 300


def mmd_test(x: NDArray[np.floating], y: NDArray[np.floating], permutations: int,
             seed: int = 0) -> tuple[float, float, float]:
    """(unbiased MMD², permutation p-value, kernel bandwidth) of samples x and y."""
    z = np.concatenate([x, y]).astype(np.float64)
    sq = np.einsum("ij,ij->i", z, z)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    off = d2[np.triu_indices(len(z), 1)]
    bandwidth2 = float(np.median(off[off > 0])) if (off > 0).any() else 1.0
    k = np.exp(-d2 / bandwidth2)
    np.fill_diagonal(k, 0.0)
    n, m = len(x), len(y)

    def stat(mask: NDArray[np.bool_]) -> float:
        a, b = mask, ~mask
        return float(k[np.ix_(a, a)].sum() / (n * (n - 1)) + k[np.ix_(b, b)].sum() / (m * (m - 1))
                     - 2.0 * k[np.ix_(a, b)].sum() / (n * m))

    first = np.zeros(n + m, dtype=bool)
    first[:n] = True
    observed = stat(first)
    rng = np.random.default_rng(seed)
    exceed = sum(stat(rng.permutation(first)) >= observed for _ in range(permutations))
    return observed, (1 + exceed) / (1 + permutations), float(np.sqrt(bandwidth2))


def drift(head_dir: str | os.PathLike[str], cache_path: str | os.PathLike[str], *,
          permutations: int = DEFAULT_PERMUTATIONS, max_rows: int = DEFAULT_MAX_ROWS,
          seed: int = 0) -> dict[str, Any]:
    """Compare the images of a cache (each image's own row) with the head's training images."""
    if permutations < 1 or max_rows < 2:
        raise ValueError(f"permutations must be >= 1 and max_rows >= 2; got "
                         f"permutations={permutations}, max_rows={max_rows}")
    head = load_head(head_dir)
    guard = head.detector
    if guard is None or guard.reference is None:
        raise DataError(f"head {head.name} has no out-of-distribution guard (trained with --ood "
                        "none, or before guards existed): retrain it to measure drift")
    with open_cache(cache_path) as cache:
        spec = cache.spec
        head.spec.check_compatible(spec, what=f"cache {cache_path}", against=f"head {head.name}")
        names = sorted(set(guard.feature_names) | set(head.feature_names))
        missing = spec.missing(names)
        if missing:
            raise DataError(f"cache {cache_path} lacks features head {head.name} reads: "
                            f"{', '.join(missing)}; extract it with the same --pooled-layers")
        rows = np.flatnonzero(cache.views == 0)
        if len(rows) < 2:
            raise DataError(f"cache {cache_path} holds {len(rows)} image; drift needs at least 2")
        features = cache.read_named(names, rows)
    scores = guard.scores(features)
    proba = head.predict_proba(features)
    predicted = np.bincount(np.argmax(proba, axis=1), minlength=len(head.classes_))
    counts = head.metadata.get("data", {}).get("train_class_counts")
    indices = head.metadata.get("class_indices", [])
    prior = (np.asarray([counts[i] for i in indices], np.float64) if counts
             else np.full(len(head.classes_), np.nan))
    prior = prior / prior.sum()
    new_share = predicted / predicted.sum()

    rng = np.random.default_rng(seed)
    ref = guard.reference[rng.permutation(len(guard.reference))[:max_rows]]
    new = guard.vectors(features)
    new = new[rng.permutation(len(new))[:max_rows]]
    mmd2, p_value, bandwidth = mmd_test(ref, new, permutations, seed)
    flagged = scores > 1.0
    return {
        "head": str(Path(head_dir)), "cache": str(cache_path), "images": len(rows),
        "ood": {"flagged": int(flagged.sum()), "rate": float(flagged.mean()),
                "expected_rate": guard.false_alarm_rate,
                "median_score": float(np.median(scores))},
        "class_mix": [{"class": c, "training": float(prior[i]), "new": float(new_share[i]),
                       "change": float(new_share[i] - prior[i])}
                      for i, c in enumerate(head.classes_)],
        "class_mix_total_variation": float(0.5 * np.abs(new_share - prior).sum()),
        "mmd": {"mmd2": mmd2, "p_value": p_value, "permutations": permutations,
                "bandwidth": bandwidth, "reference_rows": len(ref),
                "new_rows": len(new), "kernel": "rbf, median distance"},
    }


def format_drift(r: dict[str, Any]) -> str:
    o, m = r["ood"], r["mmd"]
    lines = [
        f"drift of {r['cache']} ({r['images']} images) against head {r['head']}'s training "
        "images",
        f"out of distribution: {o['flagged']}/{r['images']} ({100 * o['rate']:.1f}%; about "
        f"{100 * o['expected_rate']:g}% without drift), median ood_score "
        f"{o['median_score']:.3f}",
        "predicted class mix:",
        f"  {'class':<20} {'training':>9} {'new':>9} {'change':>9}",
        *(f"  {c['class']:<20} {c['training']:>9.3f} {c['new']:>9.3f} {c['change']:>+9.3f}"
          for c in r["class_mix"]),
        f"  total variation distance {r['class_mix_total_variation']:.3f}",
        f"MMD two-sample test on the pooled vectors: MMD² {m['mmd2']:.5f}, p = "
        f"{m['p_value']:.4f} ({m['permutations']} permutations, {m['reference_rows']} "
        f"training vs {m['new_rows']} new vectors)",
    ]
    return "\n".join(lines)
