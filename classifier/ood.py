"""The out-of-distribution guard: how far an image's pooled features lie from the training set's.

`fit_detector` fits it on the training cache's images (view 0 of each; the same named pooled
vectors the head reads, square-rooted and standardised as the head sees them) and sets its
threshold by cross-validation: the scores of held-out training images, each scored by a detector
fitted without it, put `false_alarm_rate` of in-distribution images above the threshold.

Two distances, chosen by `method`:
- `mahalanobis`: the Mahalanobis distance under a shrunk covariance (Ledoit-Wolf or OAS:
  (1 - s) S + s (tr S / D) I). With fewer images than dimensions S has rank < n, so the
  inverse is kept as the principal directions of the training vectors and one variance for
  the rest of the space: exact, and n x D numbers instead of D x D.
- `knn`: the distance of the unit-normalised vector to its k-th nearest training vector
  (threshold by leave-one-out rather than k-fold: a smaller bank has farther neighbours).

`ood_score` is the distance divided by the threshold: 1.0 is the threshold; above it the image
is out of distribution. The detector is saved as plain numpy arrays (`ood.npz`, read with
`allow_pickle=False`): nothing in it can run code.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from classifier.errors import ArtifactError, DataError
from classifier.pooling import pool

logger = logging.getLogger(__name__)

METHODS = ("mahalanobis", "knn")
SHRINKAGES = ("ledoit-wolf", "oas")
DEFAULT_METHOD = "mahalanobis"
DEFAULT_FALSE_ALARM_RATE = 0.01
#: Training vectors kept as the reference sample `drift` compares new caches with.
REFERENCE_ROWS = 512
FILE = "ood.npz"
#: Fewest training images a detector is fitted on (its threshold needs held-out scores).
MIN_IMAGES = 10


@dataclasses.dataclass
class OODDetector:
    """A fitted detector: `scores(features)` -> (N,) ood scores, 1.0 at the threshold."""

    method: str
    #: The named pooled features it reads (`extractor.features`), joined in this order; a name
    #: without '/' is a layer's maps, pooled avg+max here.
    feature_names: list[str]
    mean: NDArray[np.float32]
    scale: NDArray[np.float32]
    #: The distance at the chosen false-alarm rate (scores are divided by it).
    threshold: float
    false_alarm_rate: float
    #: mahalanobis: principal directions (k, D), their inverse shrunk variances (k,), and the
    #: inverse variance of the rest of the space.
    components: NDArray[np.float32] | None = None
    inv_variances: NDArray[np.float32] | None = None
    inv_residual: float = 0.0
    shrinkage: float = 0.0
    #: knn: unit-normalised training vectors and k.
    bank: NDArray[np.float32] | None = None
    k: int = 0
    #: Standardised training vectors (at most REFERENCE_ROWS) and their labels, for drift.
    reference: NDArray[np.float32] | None = None
    reference_labels: NDArray[np.int64] | None = None
    #: What cross-validation measured, for the metadata.
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------ scoring

    def vectors(self, features: Mapping[str, Any]) -> NDArray[np.float32]:
        """Named features -> standardised vectors (N, D)."""
        return standardise(detector_vectors(features, self.feature_names), self.mean, self.scale)

    def distances(self, z: NDArray[np.float32]) -> NDArray[np.float64]:
        if self.method == "knn":
            assert self.bank is not None
            return _knn_distance(z, self.bank, self.k)
        assert self.components is not None and self.inv_variances is not None
        return _mahalanobis(z, self.components, self.inv_variances, self.inv_residual)

    def scores(self, features: Mapping[str, Any]) -> NDArray[np.float64]:
        """(N,) ood scores: distance / threshold; above 1.0 is out of distribution."""
        return self.distances(self.vectors(features)) / self.threshold

    def to_dict(self) -> dict[str, Any]:
        """What the head's metadata records about the detector (the arrays are in ood.npz)."""
        return {"method": self.method, "features": list(self.feature_names),
                "threshold": self.threshold, "false_alarm_rate": self.false_alarm_rate,
                "shrinkage": self.shrinkage, "inv_residual": self.inv_residual, "k": self.k,
                "file": FILE, **self.info}

    # ------------------------------------------------------------------ persistence

    def save(self, directory: Path) -> Path:
        arrays: dict[str, NDArray[Any]] = {"mean": self.mean, "scale": self.scale}
        for name in ("components", "inv_variances", "bank", "reference", "reference_labels"):
            value = getattr(self, name)
            if value is not None:
                arrays[name] = value
        path = Path(directory) / FILE
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        path.write_bytes(buf.getvalue())
        return path

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any]) -> OODDetector:
        path = Path(directory) / FILE
        try:
            method = str(meta["method"])
            names = [str(n) for n in meta["features"]]
            threshold = float(meta["threshold"])
            rate = float(meta["false_alarm_rate"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"the ood entry of {directory}'s metadata is invalid ({exc!r})"
                                ) from None
        if method not in METHODS or not threshold > 0:
            raise ArtifactError(f"the ood entry of {directory}'s metadata is invalid "
                                f"(method={method!r}, threshold={threshold!r})")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: np.asarray(npz[k]) for k in npz.files}
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path} is not a readable detector file ({exc})") from None
        need = {"mahalanobis": ("components", "inv_variances"), "knn": ("bank",)}[method]
        missing = [k for k in ("mean", "scale", *need) if k not in arrays]
        if missing:
            raise ArtifactError(f"{path} lacks {', '.join(missing)}")
        return cls(method, names, arrays["mean"].astype(np.float32),
                   arrays["scale"].astype(np.float32), threshold, rate,
                   components=arrays.get("components"), inv_variances=arrays.get("inv_variances"),
                   inv_residual=float(meta.get("inv_residual", 0.0)),
                   shrinkage=float(meta.get("shrinkage", 0.0)), bank=arrays.get("bank"),
                   k=int(meta.get("k", 0)), reference=arrays.get("reference"),
                   reference_labels=arrays.get("reference_labels"))


# ---------------------------------------------------------------------- features


def detector_names(head_names: Sequence[str], pooled_layers: Sequence[str], layer: str
                   ) -> list[str]:
    """The named features the detector reads: the head's pooled vectors when it reads pooled
    vectors; for a head reading maps, the pooled vectors the cache holds, else the maps."""
    if all("/" in n for n in head_names):
        return list(head_names)
    if pooled_layers:
        return [f"{lay}/{p}" for lay in pooled_layers for p in ("avg", "max")]
    return [layer]


def detector_vectors(features: Mapping[str, Any], names: Sequence[str]) -> NDArray[np.float32]:
    """The named features joined, maps pooled avg+max, then square-rooted (as the heads do)."""
    parts = []
    for name in names:
        x = np.asarray(features[name], dtype=np.float32)
        parts.append(pool(x, "avgmax") if x.ndim == 4 else x)
    v = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    return np.sqrt(np.maximum(v, 0.0))


def standardise(v: NDArray[np.float32], mean: NDArray[np.float32],
                scale: NDArray[np.float32]) -> NDArray[np.float32]:
    return ((v - mean) / scale).astype(np.float32)


# ---------------------------------------------------------------------- distances


def _mahalanobis(z: NDArray[np.float32], components: NDArray[np.float32],
                 inv_var: NDArray[np.float32], inv_residual: float) -> NDArray[np.float64]:
    # The mean is 0 after standardising: z is already centred. The projection stays in
    # float32 (converting the (k, D) components on every call cost more than the product).
    p = (z @ components.T).astype(np.float64)
    zz = z.astype(np.float64)
    total = np.einsum("ij,ij->i", zz, zz)
    d2 = (p * p) @ inv_var.astype(np.float64) + (total - np.einsum("ij,ij->i", p, p)) * inv_residual
    return np.sqrt(np.maximum(d2, 0.0))


def _unit(z: NDArray[np.float32]) -> NDArray[np.float32]:
    return (z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _knn_distance(z: NDArray[np.float32], bank: NDArray[np.float32], k: int,
                  exclude_self: bool = False) -> NDArray[np.float64]:
    u = _unit(z)
    sim = u @ bank.T
    d2 = np.maximum(2.0 - 2.0 * sim.astype(np.float64), 0.0)
    kk = min(k + int(exclude_self), bank.shape[0]) - 1
    return np.sqrt(np.partition(d2, kk, axis=1)[:, kk])


def _fit_arrays(method: str, v: NDArray[np.float32], shrinkage: str, k: int
                ) -> dict[str, Any]:
    """Fit one detector's arrays on raw vectors v (n, D)."""
    mean = v.mean(axis=0)
    scale = v.std(axis=0)
    scale = np.where(scale > 1e-6, scale, 1.0).astype(np.float32)
    z = standardise(v, mean.astype(np.float32), scale)
    out: dict[str, Any] = {"mean": mean.astype(np.float32), "scale": scale}
    if method == "knn":
        out["bank"] = _unit(z)
        out["k"] = k
        return out
    n, d = z.shape
    zc = z.astype(np.float64) - z.mean(axis=0, dtype=np.float64)
    _, sing, vt = np.linalg.svd(zc, full_matrices=False)
    eig = sing ** 2 / n  # eigenvalues of the empirical covariance S along vt's rows
    mu = float(eig.sum() / d)  # tr(S) / D
    tr_s2 = float((eig ** 2).sum())
    if shrinkage == "oas":
        alpha = tr_s2 / d ** 2
        num = alpha + mu ** 2
        den = (n + 1) * (alpha - mu ** 2 / d)
        s = 1.0 if den == 0 else min(num / den, 1.0)
    else:
        # scikit-learn's ledoit_wolf_shrinkage, from the n x n side: it forms D x D products.
        row4 = float(np.sum(np.einsum("ij,ij->i", zc, zc) ** 2))
        delta = (tr_s2 - 2 * mu * eig.sum() + d * mu ** 2) / d
        beta = min((row4 / n - tr_s2) / (d * n), delta)
        s = 0.0 if beta == 0 else float(beta / delta)
    keep = eig > eig.max() * 1e-9
    out["components"] = vt[keep].astype(np.float32)
    out["inv_variances"] = (1.0 / ((1 - s) * eig[keep] + s * mu)).astype(np.float32)
    out["inv_residual"] = 1.0 / (s * mu)
    out["shrinkage"] = s
    return out


def _distances(arrays: Mapping[str, Any], method: str, v: NDArray[np.float32]
               ) -> NDArray[np.float64]:
    z = standardise(v, arrays["mean"], arrays["scale"])
    if method == "knn":
        return _knn_distance(z, arrays["bank"], arrays["k"])
    return _mahalanobis(z, arrays["components"], arrays["inv_variances"], arrays["inv_residual"])


def fit_detector(
    vectors: NDArray[np.float32], feature_names: Sequence[str], *,
    labels: NDArray[np.int64] | None = None, method: str = DEFAULT_METHOD,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE, shrinkage: str = "ledoit-wolf",
    k: int = 5, folds: int = 5, seed: int = 0,
) -> OODDetector:
    """Fit on the training images' raw detector vectors (`detector_vectors`, one row each) and
    set the threshold at `false_alarm_rate` of the cross-validated in-distribution scores."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got method={method!r}")
    if shrinkage not in SHRINKAGES:
        raise ValueError(f"shrinkage must be one of {', '.join(SHRINKAGES)}; "
                         f"got shrinkage={shrinkage!r}")
    if not 0 < false_alarm_rate < 0.5:
        raise ValueError(f"false_alarm_rate must be between 0 and 0.5; "
                         f"got false_alarm_rate={false_alarm_rate!r}")
    v = np.asarray(vectors, dtype=np.float32)
    n = len(v)
    if n < max(2 * folds, k + 2, MIN_IMAGES):
        raise DataError(f"the out-of-distribution detector needs at least "
                        f"{max(2 * folds, k + 2, MIN_IMAGES)} training images; got {n}")
    from sklearn.model_selection import KFold

    arrays = _fit_arrays(method, v, shrinkage, k)
    if method == "knn":
        # Leave-one-out: each image against all the others. k-fold would score against a
        # bank a fifth smaller, whose neighbours lie farther: a threshold too lenient.
        held_out = _knn_distance(standardise(v, arrays["mean"], arrays["scale"]),
                                 arrays["bank"], k, exclude_self=True)
    else:
        held_out = np.zeros(n)
        for tr, te in KFold(folds, shuffle=True, random_state=seed).split(v):
            held_out[te] = _distances(_fit_arrays(method, v[tr], shrinkage, k), method, v[te])
    threshold = float(np.quantile(held_out, 1.0 - false_alarm_rate))
    rng = np.random.default_rng(seed)
    ref_rows = np.sort(rng.permutation(n)[:REFERENCE_ROWS])
    reference = standardise(v[ref_rows], arrays["mean"], arrays["scale"])
    info: dict[str, Any] = {"cv_folds": n if method == "knn" else folds, "training_images": n,
            "cv_false_alarm_rate": float(np.mean(held_out > threshold))}
    if method == "mahalanobis":
        info["shrinkage_method"] = shrinkage
    logger.info("out-of-distribution guard: %s, threshold %.4g at %.1f%% false alarms (%d-fold "
                "CV on %d images)", method, threshold, 100 * false_alarm_rate, folds, n)
    return OODDetector(
        method, list(feature_names), arrays["mean"], arrays["scale"], threshold,
        false_alarm_rate, components=arrays.get("components"),
        inv_variances=arrays.get("inv_variances"), inv_residual=float(arrays.get(
            "inv_residual", 0.0)), shrinkage=float(arrays.get("shrinkage", 0.0)),
        bank=arrays.get("bank"), k=int(arrays.get("k", 0)), reference=reference,
        reference_labels=None if labels is None else np.asarray(labels, np.int64)[ref_rows],
        info=info,
    )
