"""The out-of-distribution guard on ELPV: AUROC and false alarms at 95% detection per out-set.

In-set: the ELPV validation images (their cache). Out-sets, all shipped with installed packages
(nothing downloaded): scikit-image's sample photos, random crops of them, the same photos
rescaled down to 32 px and back, scikit-learn's two sample photos cut into crops, the first
50 LFW faces scikit-image ships (25x25), uniform and Gaussian noise, flat images (one colour or
grey level), and, as a near set (no goal), every 4th ELPV validation image darkened to half
brightness. Every
out-set image goes the way an upload goes: encoded as PNG, decoded and resized by
`extractor.images.decode_image`, then through the real conv base; their features are kept in
--work so a rerun skips the conv base.

Each detector is fitted on the training cache's images (each image's own row), on the named
pooled features the head reads, with its threshold at --rate false alarms by 5-fold CV, as
`train-head` fits it; the table gives per out-set AUROC and the false-alarm rate on ELPV
validation at the score detecting 95% of the out-set, and, per detector, the false alarms on
ELPV validation at the CV threshold (goal: within 1 point of --rate).

    python benchmarks/ood.py --train-cache train.h5 --val-cache val.h5 --head heads/elpv \
        [--work /tmp/ood-work] [--rate 0.01]

The caches are `featcache extract --dir ELPV/train|validation` (default settings); the head is
`featcache train-head --cache train.h5 --val-cache val.h5` (the default logreg).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import WEIGHTS, machine

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

Maker = Callable[[np.random.Generator], list[np.ndarray]]


def _photos() -> list[np.ndarray]:
    import skimage.data as d

    names = ("astronaut", "brick", "camera", "cat", "cell", "chelsea", "coffee", "coins",
             "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
             "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina",
             "rocket", "text", "clock", "eagle")
    out = []
    for name in names:
        try:
            img = np.asarray(getattr(d, name)())
        except Exception:  # a sample that needs a download (pooch) is left out
            continue
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.dtype != np.uint8:
            img = (255 * (img - img.min()) / max(float(np.ptp(img)), 1e-9)).astype(np.uint8)
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[..., :3]
        out.append(img)
    return out


def _crops(images: list[np.ndarray], n: int, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for i in range(n):
        img = images[i % len(images)]
        h, w = img.shape[:2]
        side = int(rng.integers(max(32, min(h, w) // 6), min(h, w) // 2 + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        out.append(np.ascontiguousarray(img[y:y + side, x:x + side]))
    return out


def _rescaled(images: list[np.ndarray]) -> list[np.ndarray]:
    from PIL import Image

    out = []
    for img in images:
        pil = Image.fromarray(img)
        out.append(np.asarray(pil.resize((32, 32), Image.BILINEAR).resize(pil.size,
                                                                         Image.BILINEAR)))
    return out


def _sklearn_crops(rng: np.random.Generator) -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return _crops(list(load_sample_images().images), 30, rng)


def _faces(_: np.random.Generator) -> list[np.ndarray]:
    from skimage.data import lfw_subset

    return [(255 * f).astype(np.uint8) for f in lfw_subset()[:50]]


def _noise(rng: np.random.Generator) -> list[np.ndarray]:
    uniform = [rng.integers(0, 256, (150, 150, 3), dtype=np.uint8) for _ in range(10)]
    gauss = [np.clip(rng.normal(128, 40, (150, 150)), 0, 255).astype(np.uint8) for _ in range(10)]
    return uniform + gauss


def _flat(rng: np.random.Generator) -> list[np.ndarray]:
    greys = [np.full((150, 150), v, np.uint8) for v in np.linspace(0, 255, 12).astype(int)]
    colours = [np.broadcast_to(rng.integers(0, 256, 3).astype(np.uint8), (150, 150, 3)).copy()
               for _ in range(12)]
    return greys + colours


OUT_SETS: dict[str, Maker] = {
    "skimage photos": lambda rng: _photos(),
    "skimage photo crops": lambda rng: _crops(_photos(), 40, rng),
    "skimage photos rescaled": lambda rng: _rescaled(_photos()),
    "sklearn photo crops": _sklearn_crops,
    "LFW faces (skimage)": _faces,
    "noise": _noise,
    "flat images": _flat,
}


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def features_of(images: list[np.ndarray], base, size: int) -> dict[str, np.ndarray]:
    """Named features of images decoded as uploads are."""
    from extractor.images import decode_image

    parts = []
    for start in range(0, len(images), 16):
        pixels = np.stack([decode_image(_png(img), size) for img in images[start:start + 16]])
        parts.append(base(pixels))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def cached_features(work: Path, name: str, make: Callable[[], list[np.ndarray]], base_fn,
                    size: int) -> dict[str, np.ndarray]:
    path = work / (name.replace(" ", "_").replace("(", "").replace(")", "") + ".npz")
    if path.exists():
        with np.load(path, allow_pickle=False) as npz:
            return {k.replace("__", "/"): npz[k] for k in npz.files}
    t = time.perf_counter()
    feats = features_of(make(), base_fn(), size)
    np.savez(path, **{k.replace("/", "__"): v for k, v in feats.items()})
    print(f"  {name}: {len(next(iter(feats.values())))} images through the conv base in "
          f"{time.perf_counter() - t:.0f}s", flush=True)
    return feats


def auroc_fpr95(inside: np.ndarray, outside: np.ndarray) -> tuple[float, float]:
    """AUROC of telling out from in (higher score: out), and the share of in-set images at or
    above the score that flags 95% of the out-set."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    auc = float(roc_auc_score(y, np.r_[inside, outside]))
    cut = np.quantile(outside, 0.05)
    return auc, float(np.mean(inside >= cut))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-cache", type=Path, required=True)
    ap.add_argument("--val-cache", type=Path, required=True)
    ap.add_argument("--head", type=Path, required=True, help="head whose features are read")
    ap.add_argument("--work", type=Path, default=Path("/tmp/featcache-ood-bench"))
    ap.add_argument("--rate", type=float, default=0.01, help="false-alarm rate (default 0.01)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from classifier.artifact import load_head
    from classifier.data import labelled_subset
    from classifier.ood import detector_names, detector_vectors, fit_detector
    from extractor import open_cache

    print(f"machine: {machine()}", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    head = load_head(args.head)
    spec = head.spec
    names = detector_names(head.feature_names, spec.pooled_layers, spec.layer)
    print(f"head {head.name} ({head.kind}); detector features: {', '.join(names)}")
    train, _, _ = labelled_subset(args.train_cache, "training cache")
    v_train, _ = train.load(lambda f: detector_vectors(f, names), names)
    with open_cache(args.val_cache) as cache:
        rows = np.flatnonzero(cache.views == 0)
        val_feats = cache.read_named(names, rows)

    base_holder: dict[str, object] = {}

    def base_fn():
        if "base" not in base_holder:
            from extractor.backbone import ConvBase

            base_holder["base"] = ConvBase(WEIGHTS, image_size=spec.input_size, layer=spec.layer,
                                           pooled_layers=spec.pooled_layers)
        return base_holder["base"]

    rng = np.random.default_rng(args.seed)
    out_feats = {name: cached_features(args.work, name, lambda m=make: m(rng), base_fn,
                                       spec.input_size)
                 for name, make in OUT_SETS.items()}

    def darkened() -> list[np.ndarray]:
        from PIL import Image

        with open_cache(args.val_cache) as cache:
            files = [cache.paths[i] for i in rows[::4]]  # every 4th: bounded cost
            root = Path(cache.attrs.get("source_dir", ""))
        imgs = []
        for f in files:
            p = Path(f) if Path(f).is_absolute() else root / f
            with Image.open(p) as im:
                imgs.append((np.asarray(im.convert("L"), np.float32) * 0.5).astype(np.uint8))
        return imgs

    near = {}
    try:
        near["ELPV validation darkened x0.5 (near)"] = cached_features(
            args.work, f"darkened_{args.val_cache.stem}", darkened, base_fn, spec.input_size)
    except OSError as exc:
        print(f"  (near set left out: {exc})")

    detectors = {
        "mahalanobis (Ledoit-Wolf)": dict(method="mahalanobis", shrinkage="ledoit-wolf"),
        "mahalanobis (OAS)": dict(method="mahalanobis", shrinkage="oas"),
        "kNN (k=5)": dict(method="knn", k=5),
        "kNN (k=1)": dict(method="knn", k=1),
    }
    results = {}
    for label, kw in detectors.items():
        t = time.perf_counter()
        det = fit_detector(v_train, names, false_alarm_rate=args.rate, seed=args.seed, **kw)
        fit_s = time.perf_counter() - t
        inside = det.scores(val_feats)
        t = time.perf_counter()
        for _ in range(200):
            det.scores({k: v[:1] for k, v in val_feats.items()})
        per_image_ms = (time.perf_counter() - t) / 200 * 1000
        rows_out = {name: auroc_fpr95(inside, det.scores(f))
                    for name, f in {**out_feats, **near}.items()}
        results[label] = {"false_alarms": float(np.mean(inside > 1.0)), "rows": rows_out,
                          "fit_s": fit_s, "score_ms": per_image_ms}

    n_in = len(next(iter(val_feats.values())))
    sizes = {name: len(next(iter(f.values()))) for name, f in {**out_feats, **near}.items()}
    print(f"\nin-set: ELPV validation, {n_in} images; detectors fitted on {len(v_train)} "
          f"training images; threshold at {100 * args.rate:g}% false alarms by 5-fold CV\n")
    labels = list(detectors)
    print("| out-set (images) | " + " | ".join(f"{lab}: AUROC / FPR@95" for lab in labels) + " |")
    print("|---|" + "---|" * len(labels))
    for name, n in sizes.items():
        cells = [f"{results[lab]['rows'][name][0]:.4f} / {100 * results[lab]['rows'][name][1]:.1f}%"
                 for lab in labels]
        print(f"| {name} ({n}) | " + " | ".join(cells) + " |")
    print("| false alarms on ELPV validation at the CV threshold | "
          + " | ".join(f"{100 * results[lab]['false_alarms']:.1f}%" for lab in labels) + " |")
    print("| fit (with 5-fold CV) / score one image | "
          + " | ".join(f"{results[lab]['fit_s']:.1f} s / {results[lab]['score_ms']:.2f} ms"
                       for lab in labels) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
