#!/usr/bin/env python3
"""The recipe's methods and ours, scored by cross-validation on training data, then validation once.

usage: python benchmarks/recipe.py [--train DIR] [--val DIR] [--folds 5] [--views 7]
                                   [--methods 1,2,2d,3,3d,4] [--work DIR] [--json]

Methods, all on the same folds of the same images:
  1   a small convnet trained from scratch on the images (the recipe's method 1)
  2   cached block5_pool maps + the recipe's dense head (method 2)
  2d  train-head's default on extract's default cache: logistic regression on the pooled
      vectors of block3-5, C and layers chosen by train-head's own cross-validation
  3   cached maps of each image and its --views dihedral views + the recipe's dense head,
      averaging over the views at prediction time (the recipe's method 3, base run once a view)
  3d  the same cache + train-head's default, averaging over the views: README "Best accuracy"
  4   cached block4_pool maps of the same views + block5 fine-tuned with a dense head, averaging
      over the views (the recipe's method 4, blocks 1-4 run once a view)

Protocol (settings are never chosen on validation data):
- each kind of cache is extracted once per folder (wall time counts it once, for every method
  that reads it);
- cross-validation: the training images fall into --folds folds, stratified by class, every
  view of an image in its image's fold (`classifier.selection.folds`); each method is trained on
  all folds but one and scored on that one, every setting chosen inside the training part only
  (train-head's own cross-validation runs inside: nested), for the mean and spread over folds;
- then each method is trained once on the whole training folder and measured once on the
  validation folder, given with its 95% Wilson interval: 356 images cannot tell 83% from 82%.

Methods 1 and 4 train for minutes per fit; --folds-expensive (default 3) folds for them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FEATCACHE_SHARED", REPO.parent / "shared"))
METHODS = {
    "1": "small convnet from scratch",
    "2": "cached block5_pool maps + dense head (the recipe's method 2)",
    "2d": "default cache + train-head's default (logreg on block3-5 vectors, CV-chosen)",
    "3": "cached {k} dihedral views + dense head, averaged over views",
    "3d": "cached {k} dihedral views + train-head's default, averaged over views",
    "4": "cached block4_pool of {k} dihedral views + fine-tuned block5, averaged over views",
}
EXPENSIVE = {"1", "4"}


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # The interval contains p; at p = 0 or 1 rounding can put it a hair outside.
    return max(0.0, min(centre - half, p)), min(1.0, max(centre + half, p))


def extract(folder: Path, out: Path, weights: str | None, **kw: Any) -> tuple[float, int]:
    """(seconds, images through the conv base) of one extraction. A cache left by an earlier
    run in the same --work folder is reused, with the figures recorded beside it then."""
    from extractor.runner import Options, run

    record = out.with_name(out.name + ".extraction.json")
    if out.exists() and record.exists():
        done = json.loads(record.read_text())
        return float(done["seconds"]), int(done["images_through_base"])
    t = time.perf_counter()
    summary = run(Options(directory=folder, out=out, weights=weights, progress=False, **kw))
    seconds = time.perf_counter() - t
    passes = summary.extracted * (1 + kw.get("augment", 0))
    record.write_text(json.dumps({"seconds": seconds, "images_through_base": passes}))
    return seconds, passes


def image_folds(cache: Path, k: int, seed: int) -> list[set[str]]:
    """The held-out image paths of each fold, drawn as train-head draws its own folds."""
    from classifier.data import labelled_subset
    from classifier.selection import folds
    from extractor import open_cache

    subset, _, _ = labelled_subset(cache, "training cache", with_views=True)
    with open_cache(cache) as c:
        paths = np.asarray(c.paths, dtype=object)[subset.indices]
    return [set(paths[held].tolist()) for _, held in folds(subset, k, seed)]


def split_cache(cache: Path, held_out: set[str], out_dir: Path) -> tuple[Path, Path]:
    """Two caches of `cache`'s rows: the files not in `held_out`, and those in it."""
    from extractor import open_cache, write_cache

    out_dir.mkdir(parents=True, exist_ok=True)
    with open_cache(cache) as c:
        spec, names = c.spec, c.class_names
        paths = np.asarray(c.paths, dtype=object)
        labels, views, sha = c.labels, c.views, np.asarray(c.sha256, dtype=object)
        augment = {k: v for k, v in c.attrs.items() if k.startswith("augment")}
        features = c.read_named(spec.stored_names())
    out = []
    for name, rows in (("train", ~np.isin(paths, list(held_out))),
                       ("held-out", np.isin(paths, list(held_out)))):
        path = out_dir / f"{name}.h5"
        write_cache(path, {n: f[rows] for n, f in features.items()}, labels[rows],
                    paths[rows].tolist(), spec, names, sha[rows].tolist(), views=views[rows],
                    extra_attrs=augment)
        out.append(path)
    return out[0], out[1]


def head_accuracy(cache: Path, val: Path, out: Path, head: str, **params: Any) -> tuple[float,
                                                                                          int]:
    """(accuracy on `val`'s images, their number) of a head trained with train-head's defaults
    (and its own cross-validation for the default head)."""
    from classifier.artifact import read_metadata
    from classifier.training import train

    path = train(cache, out, head=head, val_cache=val, params=params or None, overwrite=True)
    validation = read_metadata(path)["metrics"]["validation"]
    return float(validation["accuracy"]), int(validation["n"])


def scratch_convnet(train: Sequence[tuple[Path, int]], val: Sequence[tuple[Path, int]],
                    epochs: int, seed: int) -> float:
    """The recipe's method 1: a small convnet from scratch on 150x150 images in [0, 1]."""
    import keras

    from extractor.images import decode_image

    def load(files: Sequence[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
        x = np.stack([decode_image(p.read_bytes(), 150) for p, _ in files])
        return x.astype(np.float32) / 255.0, np.array([y for _, y in files])

    xt, yt = load(train)
    xv, yv = load(val)
    # Keras's validation_split takes the last rows as they are, and files come sorted by class:
    # shuffle first, or early stopping watches one class only.
    order = np.random.default_rng(seed).permutation(len(yt))
    xt, yt = xt[order], yt[order]
    keras.utils.set_random_seed(seed)
    layers: list[Any] = [keras.Input((150, 150, 3))]
    for filters in (32, 64, 128, 128):
        layers += [keras.layers.Conv2D(filters, 3, activation="relu"), keras.layers.MaxPooling2D()]
    n_classes = int(max(yt.max(), yv.max())) + 1
    binary = n_classes == 2
    layers += [keras.layers.Flatten(), keras.layers.Dropout(0.5),
               keras.layers.Dense(512, activation="relu"),
               keras.layers.Dense(1, "sigmoid") if binary else keras.layers.Dense(n_classes,
                                                                                  "softmax")]
    model = keras.Sequential(layers)
    loss = "binary_crossentropy" if binary else "sparse_categorical_crossentropy"
    model.compile(keras.optimizers.RMSprop(1e-4), loss, metrics=["accuracy"])
    # Early stopping on the training data's own last 20%: never on the images it is scored on.
    model.fit(xt, yt, batch_size=20, epochs=epochs, validation_split=0.2, shuffle=True,
              verbose=0,
              callbacks=[keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)])
    p = model.predict(xv, verbose=0)
    predicted = (p[:, 0] > 0.5).astype(int) if binary else p.argmax(axis=1)
    return float(np.mean(predicted == yv))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--train", type=Path, default=SHARED / "data" / "elpv" / "train")
    ap.add_argument("--val", type=Path, default=SHARED / "data" / "elpv" / "validation")
    ap.add_argument("--weights", default=None, help="default: $FEATCACHE_WEIGHTS or imagenet")
    ap.add_argument("--views", type=int, default=7, help="dihedral views per image (default 7)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--folds-expensive", type=int, default=3,
                    help="folds for methods 1 and 4, which train for minutes per fit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scratch-epochs", type=int, default=30)
    ap.add_argument("--dense-epochs", type=int, default=None, help="ceiling (default: head's)")
    ap.add_argument("--fine-tune-epochs", type=int, default=None)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--work", type=Path, default=Path("recipe-work"))
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    w, k = args.work, args.views
    w.mkdir(parents=True, exist_ok=True)
    dense = {"epochs": args.dense_epochs} if args.dense_epochs else {}
    finetune = dict(dense)
    if args.fine_tune_epochs:
        finetune["fine_tune_epochs"] = args.fine_tune_epochs
    if args.weights:
        finetune["weights"] = args.weights

    # The caches each method reads: (training cache, validation cache), extracted once.
    views = {"augment": k, "augment_mode": "dihedral"}
    b4 = {"layer": "block4_pool", "pooled_layers": ()}
    kinds = {"plain": {}, "views": views, "b4-views": {**b4, **views}}
    needs = {"2": "plain", "2d": "plain", "3": "views", "3d": "views", "4": "b4-views"}
    caches: dict[str, tuple[Path, Path, float, int]] = {}
    for kind in dict.fromkeys(needs[m] for m in methods if m in needs):
        tr, va = w / f"train-{kind}.h5", w / f"val-{kind}.h5"
        s1, n1 = extract(args.train, tr, args.weights, **kinds[kind])
        s2, n2 = extract(args.val, va, args.weights, **kinds[kind])
        caches[kind] = (tr, va, s1 + s2, n1 + n2)
        print(f"  extracted {kind}: {s1 + s2:.0f}s", file=sys.stderr, flush=True)

    from extractor.walk import scan

    train_files = [(args.train / p, y) for p, y in scan(args.train).labels.items()]
    val_files = [(args.val / p, y) for p, y in scan(args.val).labels.items()]
    plain_cache = caches["plain"][0] if "plain" in caches else None
    folds_of: dict[int, list[set[str]]] = {}

    def folds(n: int) -> list[set[str]]:
        if n not in folds_of:
            source = plain_cache or w / "folds.h5"
            if plain_cache is None:
                extract(args.train, source, args.weights, pooled_layers=())
            folds_of[n] = image_folds(source, n, args.seed)
        return folds_of[n]

    def cache_method(kind: str, head: str,
                     params: dict[str, Any]) -> Callable[..., tuple[float, int]]:
        def fit(held_out: set[str] | None, tag: str) -> tuple[float, int]:
            train_cache, val_cache = caches[kind][:2]
            if held_out is not None:
                train_cache, val_cache = split_cache(train_cache, held_out, w / "folds" / tag)
            return head_accuracy(train_cache, val_cache, w / "heads" / tag, head, **params)
        return fit

    def scratch(held_out: set[str] | None, tag: str) -> tuple[float, int]:
        if held_out is None:
            return scratch_convnet(train_files, val_files, args.scratch_epochs, args.seed), \
                len(val_files)
        rel = {f: f.relative_to(args.train).as_posix() for f, _ in train_files}
        tr = [(f, y) for f, y in train_files if rel[f] not in held_out]
        te = [(f, y) for f, y in train_files if rel[f] in held_out]
        return scratch_convnet(tr, te, args.scratch_epochs, args.seed), len(te)

    runners: dict[str, Any] = {
        "1": scratch,
        "2": cache_method("plain", "dense", dense),
        "2d": cache_method("plain", "logreg", {}),
        "3": cache_method("views", "dense", dense),
        "3d": cache_method("views", "logreg", {}),
        "4": cache_method("b4-views", "finetune", finetune),
    }
    rows: list[dict[str, Any]] = []
    for m in methods:
        n_folds = args.folds_expensive if m in EXPENSIVE else args.folds
        scores = []
        for i, held_out in enumerate(folds(n_folds)):
            acc, _ = runners[m](held_out, f"{m}-fold{i}")
            scores.append(acc)
            print(f"  {m} fold {i + 1}/{n_folds}: {acc:.4f}", file=sys.stderr, flush=True)
        if m in needs:
            shutil.rmtree(w / "folds", ignore_errors=True)
        t = time.perf_counter()
        acc, n = runners[m](None, f"{m}-final")
        seconds = time.perf_counter() - t + (caches[needs[m]][2] if m in needs else 0.0)
        passes = caches[needs[m]][3] if m in needs else 0
        lo, hi = wilson(round(acc * n), n)
        rows.append({"method": m, "name": METHODS[m].format(k=k), "folds": n_folds,
                     "cv_accuracy_mean": float(np.mean(scores)),
                     "cv_accuracy_std": float(np.std(scores)), "cv_accuracy_folds": scores,
                     "val_accuracy": acc, "val_images": n, "val_ci95": [lo, hi],
                     "wall_s": round(seconds, 1), "images_through_base": passes})
        print(f"  {m}: CV {np.mean(scores):.4f} ± {np.std(scores):.4f}, validation {acc:.4f} "
              f"in {seconds:.0f}s", file=sys.stderr, flush=True)

    print("\n| method | CV accuracy on train (mean ± sd, folds) | validation accuracy "
          "(95% interval) | wall time | images through the conv base |")
    print("|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["val_ci95"]
        print(f"| {r['method']} {r['name']} | {100 * r['cv_accuracy_mean']:.1f}% ± "
              f"{100 * r['cv_accuracy_std']:.1f} ({r['folds']}) | "
              f"{100 * r['val_accuracy']:.1f}% ({100 * lo:.1f}-{100 * hi:.1f}) | "
              f"{r['wall_s']:.0f} s | {r['images_through_base']:,} |")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
