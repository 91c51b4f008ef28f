#!/usr/bin/env python3
"""The recipe's four methods side by side, on one train and one validation folder.

usage: python benchmarks/recipe.py --train DIR --val DIR [--augment 4] [--work DIR]

  1  small convnet trained from scratch on the images (the recipe's method 1)
  2  cached block5_pool features + dense head (method 2), and + our default head (logreg)
  3  cached block5_pool features of K augmented views per image + dense head: the recipe's
     method 3 (frozen base, head trained with augmentation) with the base run once per view
     instead of once per image per epoch
  4  cached block4_pool features of the same views + block5 fine-tuned with the head: the
     recipe's method 4 with blocks 1-4 run once per view instead of every epoch

Prints a table (method, validation accuracy, wall time, images through the conv base) and, for
scale, what the recipe's own method 3 would cost: --recipe-epochs passes of every training
image through the conv base, at the throughput measured here. Validation accuracy is measured
on the validation folder's images (never on augmented views). Wall time includes extraction.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FEATCACHE_SHARED", REPO.parent / "shared"))


def extract(folder: Path, out: Path, weights: str | None, **kw: Any) -> tuple[float, int, float]:
    """(seconds, rows through the conv base, conv-base images/s) of one extraction."""
    from extractor.runner import Options, run

    t = time.perf_counter()
    summary = run(Options(directory=folder, out=out, weights=weights, progress=False, **kw))
    rows = summary.extracted * (1 + kw.get("augment", 0))
    return time.perf_counter() - t, rows, rows / max(summary.extract_s, 1e-9)


def head_accuracy(cache: Path, val: Path, out: Path, head: str, **params: Any) -> tuple[float,
                                                                                          float]:
    """(validation accuracy, training seconds) of a head trained with train-head's defaults."""
    from classifier.artifact import read_metadata
    from classifier.training import train

    t = time.perf_counter()
    path = train(cache, out, head=head, val_cache=val, params=params or None, overwrite=True)
    meta = read_metadata(path)
    return float(meta["metrics"]["validation"]["accuracy"]), time.perf_counter() - t


def scratch_convnet(train_dir: Path, val_dir: Path, epochs: int, seed: int) -> tuple[float,
                                                                                       float]:
    """The recipe's method 1: a small convnet from scratch on 150x150 images in [0, 1]."""
    import keras

    from extractor.images import decode_image
    from extractor.walk import scan

    def load(folder: Path) -> tuple[np.ndarray, np.ndarray]:
        listing = scan(folder)
        x = np.stack([decode_image((folder / p).read_bytes(), 150) for p in listing.labels])
        return x.astype(np.float32) / 255.0, np.array(list(listing.labels.values()))

    t = time.perf_counter()
    xt, yt = load(train_dir)
    xv, yv = load(val_dir)
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((150, 150, 3))]
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
    model.fit(xt, yt, batch_size=20, epochs=epochs, validation_data=(xv, yv), verbose=0,
              callbacks=[keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)])
    p = model.predict(xv, verbose=0)
    predicted = (p[:, 0] > 0.5).astype(int) if binary else p.argmax(axis=1)
    acc = float(np.mean(predicted == yv))
    return acc, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--train", type=Path, default=SHARED / "data" / "elpv" / "train")
    ap.add_argument("--val", type=Path, default=SHARED / "data" / "elpv" / "validation")
    ap.add_argument("--weights", default=None, help="default: $FEATCACHE_WEIGHTS or imagenet")
    ap.add_argument("--augment", type=int, default=4, help="views per image (default: 4)")
    ap.add_argument("--augment-mode", choices=("recipe", "dihedral"), default="recipe",
                    help="augmentations of methods 3 and 4 (default: the recipe's)")
    ap.add_argument("--scratch-epochs", type=int, default=30)
    ap.add_argument("--dense-epochs", type=int, default=None, help="ceiling (default: head's)")
    ap.add_argument("--fine-tune-epochs", type=int, default=None)
    ap.add_argument("--recipe-epochs", type=int, default=100,
                    help="epochs the recipe's own method 3 runs, for its cost estimate")
    ap.add_argument("--methods", default="1,2,3,4")
    ap.add_argument("--work", type=Path, default=Path("recipe-work"))
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    methods = {m.strip() for m in args.methods.split(",")}
    args.work.mkdir(parents=True, exist_ok=True)
    w, k, mode = args.work, args.augment, args.augment_mode
    dense = {"epochs": args.dense_epochs} if args.dense_epochs else {}
    finetune = dict(dense)
    if args.fine_tune_epochs:
        finetune["fine_tune_epochs"] = args.fine_tune_epochs
    if args.weights:
        finetune["weights"] = args.weights
    rows: list[dict[str, Any]] = []

    def row(method: str, acc: float, seconds: float, through_base: int) -> None:
        rows.append({"method": method, "val_accuracy": acc,
                     "wall_s": round(seconds, 1), "images_through_base": through_base})
        print(f"  {method}: {acc:.4f} in {seconds:.0f}s", file=sys.stderr, flush=True)

    ips = 0.0
    if "1" in methods:
        acc, s = scratch_convnet(args.train, args.val, args.scratch_epochs, seed=0)
        row("1 small convnet from scratch", acc, s, 0)
    if methods & {"2", "3"}:
        val_s, val_n, _ = extract(args.val, w / "val.h5", args.weights)
    if "2" in methods:
        tr_s, tr_n, ips = extract(args.train, w / "train.h5", args.weights)
        acc, s = head_accuracy(w / "train.h5", w / "val.h5", w / "heads" / "dense", "dense",
                               **dense)
        row("2 cached features + dense head (recipe)", acc, tr_s + val_s + s, tr_n + val_n)
        acc, s = head_accuracy(w / "train.h5", w / "val.h5", w / "heads" / "logreg", "logreg")
        row("2 cached features + logreg (our default)", acc, tr_s + val_s + s, tr_n + val_n)
    if "3" in methods:
        tr_s, tr_n, ips3 = extract(args.train, w / f"train-{mode}{k}.h5", args.weights,
                                   augment=k, augment_mode=mode)
        ips = ips or ips3
        acc, s = head_accuracy(w / f"train-{mode}{k}.h5", w / "val.h5", w / "heads" / "aug",
                               "dense", **dense)
        row(f"3 cached {k} {mode} views + dense head", acc, tr_s + val_s + s, tr_n + val_n)
    if "4" in methods:
        v4_s, v4_n, _ = extract(args.val, w / "val-b4.h5", args.weights, layer="block4_pool")
        tr_s, tr_n, _ = extract(args.train, w / f"train-b4-{mode}{k}.h5", args.weights,
                                layer="block4_pool", augment=k, augment_mode=mode)
        acc, s = head_accuracy(w / f"train-b4-{mode}{k}.h5", w / "val-b4.h5",
                               w / "heads" / "finetune", "finetune", **finetune)
        row(f"4 cached block4 of {k} {mode} views + fine-tuned block5", acc, tr_s + v4_s + s,
            tr_n + v4_n)

    from extractor.walk import scan

    n_train = len(scan(args.train).labels)
    print("\n| method | validation accuracy | wall time | images through the conv base |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {100 * r['val_accuracy']:.1f}% | {r['wall_s']:.0f} s | "
              f"{r['images_through_base']:,} |")
    if ips:
        recipe = args.recipe_epochs * n_train
        print(f"\nThe recipe's method 3 ({args.recipe_epochs} epochs, base frozen, augmentation "
              f"on the fly) would pass {recipe:,} images through the conv base: about "
              f"{recipe / ips / 60:.0f} min at the {ips:.1f} images/s measured here "
              "(forward passes only; an estimate, not a run).")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
