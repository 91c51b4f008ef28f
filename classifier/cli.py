"""`train-head` and `evaluate`: the classifier's command lines.

Heavy imports (TensorFlow, scikit-learn) happen inside the command bodies so `--help` is instant.
Bad input exits 1 with one line on stderr; bad arguments exit 2 (argparse); Ctrl-C 130
(`extractor.console`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from extractor import console

TRAIN_EPILOG = """\
Heads (each reads named features of the cache: pooled vectors of one or several layers, or
the maps of its main layer):
  logreg  (default) logistic regression on avg+max pooled vectors, square-rooted and
          standardised (--scaling); C and the layers (block5, block4, block4+5, block3+4+5, as
          far as the cache holds them) are chosen by cross-validation on the training cache
  svm     RBF support-vector machine on the same vectors, Platt-scaled probabilities;
          C and layers chosen by cross-validation as for logreg
  auto    logreg or svm, whichever cross-validates better (with their C and layers)
  dense   the recipe's Keras head: pooling -> Dense(256, relu) -> Dropout(0.5) -> sigmoid
          (2 classes) / softmax; RMSprop; defaults --pooling flatten --learning-rate 1e-4,
          early stopping on validation loss (patience 20) restoring the best weights
  finetune  (--fine-tune block5) VGG16's block5, initialised from the ImageNet weights, then
          the dense head, on a cache of block4_pool maps (extract --layer block4_pool): the
          head trains with block5 frozen, then block5_conv1..3 train with it at lr 1e-5

Selection: for logreg, svm and auto, the settings not given on the command line (--C,
--layers, the kind) are chosen by stratified --cv-fold cross-validation over the training
cache's images (all views of an image in one fold), scored as the head will predict; the CV
mean and spread of every candidate go into metadata.json. --cv 0 skips it (defaults: C 0.03,
every layer the cache holds). Cost: one fit per candidate and fold (seconds on 714 images,
about a minute with 7 views each).

Views: on a cache extracted with --augment K, the head trains on every view and, at
prediction time (evaluate, predict, serve), averages its probabilities over each image's
views: K+1 forward passes of the conv base per image in serve and predict. Extract
validation/test caches with the same --augment K --augment-mode to evaluate that way.
--no-tta makes the head predict from each image alone.

Validation: --val-cache (same feature spec and class names as --cache, else refused) or a
stratified, seeded hold-out of --val-split of the training cache; used once, for the report
after training, never to choose settings.

The artifact directory (--out) holds the model (model.keras or model.skops), metadata.json
(classes, feature spec, params, metrics, versions), confusion_matrix.png and, for dense heads,
training_curves.png. Exit status: 0 on success, 1 for unusable input, 2 for bad arguments,
130 when interrupted (nothing is written: --out appears only once complete).
"""


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0; got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {text}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0 < value < 0.5:
        raise argparse.ArgumentTypeError(f"must be between 0 and 0.5 (exclusive); got {text}")
    return value


def _accuracy(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1]; got {text}")
    return value


def _layer_list(text: str) -> list[str]:
    from extractor.vgg16 import LAYERS

    layers = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [layer for layer in layers if layer not in LAYERS]
    if not layers or unknown:
        raise argparse.ArgumentTypeError(
            f"choose from {', '.join(LAYERS)}, comma-separated; got {text!r}")
    return layers


def build_train_parser(prog: str = "train-head") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train a classifier head on a feature cache, evaluate it on validation "
        "data and save it as an artifact directory the service can load.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cache", required=True, type=Path, help="labelled training cache (.h5)")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-cache", type=Path, default=None, help="labelled validation cache")
    val.add_argument("--val-split", type=float, default=0.2,
                     help="fraction held out for validation when no --val-cache "
                     "(default: %(default)s)")
    p.add_argument("--head", choices=("logreg", "svm", "auto", "dense", "finetune"),
                   default="logreg", help="head kind (default: %(default)s)")
    p.add_argument("--cv", type=int, default=5, metavar="K",
                   help="folds of the cross-validation that chooses logreg/svm/auto settings; "
                   "0 skips it (default: %(default)s)")
    p.add_argument("--layers", type=_layer_list, default=None, metavar="LAYER[,LAYER...]",
                   help="layers whose pooled vectors the head reads, e.g. "
                   "block3_pool,block4_pool,block5_pool (default: chosen by --cv for "
                   "logreg/svm; the maps of the cache's layer for dense)")
    p.add_argument("--no-tta", dest="tta", action="store_false",
                   help="never average over augmented views at prediction time")
    p.add_argument("--fine-tune", choices=("block5",), default=None,
                   help="fine-tune VGG16's block5 with a dense head on a block4_pool cache "
                   "(same as --head finetune)")
    p.add_argument("--out", type=Path, default=None,
                   help="artifact directory to create (default: heads/<head>)")
    p.add_argument("--force", action="store_true",
                   help="replace --out if it holds a head (anything else there is refused)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for the split, initialisation and shuffling (default: %(default)s)")
    p.add_argument("--pooling", choices=("flatten", "avg", "max", "avgmax"), default=None,
                   help="map -> vector: flatten, global average, global max, or both pooled "
                   "(default: avgmax for logreg/svm, flatten for dense)")
    p.add_argument("--class-weight", choices=("balanced", "none"), default="balanced",
                   help="weight classes inversely to their frequency (default: %(default)s)")
    g = p.add_argument_group("logreg and svm")
    g.add_argument("--memory-gb", type=_positive_float, default=2.0,
                   help="memory for the features a fit holds (default: %(default)s): the final "
                   "fit uses every training row that fits, else the largest stratified sample "
                   "that does (stated in the summary and the head's metadata)")
    g.add_argument("--cv-rows", type=_positive_int, default=50_000,
                   help="cross-validation scores its settings on a stratified sample of at "
                   "most this many rows (default: %(default)s)")
    g.add_argument("--C", type=_positive_float, default=None,
                   help="inverse regularisation strength (default: chosen by --cv; with --cv 0, "
                   "0.03 logreg, 10 svm)")
    g.add_argument("--scaling", choices=("standard", "sqrt", "l2"), default="sqrt",
                   help="standard: StandardScaler; sqrt: square root, then StandardScaler; "
                   "l2: unit-norm rows (default: %(default)s)")
    g.add_argument("--kernel", choices=("rbf", "linear"), default="rbf",
                   help="svm kernel (default: %(default)s)")
    d = p.add_argument_group("dense and finetune (defaults: dense / finetune)")
    d.add_argument("--learning-rate", type=_positive_float, default=None,
                   help="RMSprop learning rate of the head (default: 1e-4)")
    d.add_argument("--epochs", type=_positive_int, default=None,
                   help="most epochs; early stopping usually ends sooner (default: 200 / 100)")
    d.add_argument("--patience", type=int, default=None,
                   help="epochs without a better validation loss before stopping "
                   "(default: 20 / 8)")
    d.add_argument("--batch-size", type=_positive_int, default=None,
                   help="batch size (default: 20)")
    d.add_argument("--units", type=_positive_int, default=None,
                   help="hidden units (default: 256)")
    d.add_argument("--dropout", type=float, default=None, help="dropout rate (default: 0.5)")
    f = p.add_argument_group("finetune")
    f.add_argument("--fine-tune-learning-rate", type=_positive_float, default=None,
                   help="RMSprop learning rate once block5 is unfrozen (default: 1e-5)")
    f.add_argument("--fine-tune-epochs", type=_positive_int, default=None,
                   help="most epochs with block5 unfrozen (default: 30)")
    f.add_argument("--weights", default=None,
                   help="VGG16 weights block5 starts from: the ones the cache was made with "
                   "(default: $FEATCACHE_WEIGHTS, else imagenet)")
    t = p.add_argument_group("trust (out-of-distribution guard, abstention)")
    t.add_argument("--ood", choices=("mahalanobis", "knn", "none"), default="mahalanobis",
                   help="out-of-distribution detector fitted on the training images' pooled "
                   "vectors: Mahalanobis distance under a shrunk (Ledoit-Wolf) covariance, or "
                   "distance to the 5th nearest training image; none fits no guard "
                   "(default: %(default)s)")
    t.add_argument("--false-alarm-rate", type=_rate, default=0.01, metavar="RATE",
                   help="share of in-distribution images the guard may flag: its threshold is "
                   "set there by 5-fold CV on the training images (default: %(default)s)")
    t.add_argument("--target-accuracy", type=_accuracy, default=None, metavar="A",
                   help="choose by --cv-fold CV the confidence (highest probability) below which "
                   "the head abstains so that the images it answers reach accuracy A, e.g. "
                   "0.95; serve then answers label null, abstained true (default: never abstain)")
    p.add_argument("-q", "--quiet", action="store_true", help="errors only")
    console.add_common(p, json_help="print the summary as JSON on stdout (even with -q): the "
                       "head, its kind, features, CV choice, train and validation accuracy")
    return p


def _head_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"class_weight": args.class_weight}
    if args.pooling is not None:
        params["pooling"] = args.pooling
    if args.layers is not None and args.head != "finetune":
        params["layers"] = args.layers
    if args.head in ("logreg", "svm", "auto"):
        params["scaling"] = args.scaling
        if args.C is not None:
            params["C"] = args.C
        if args.head == "svm" or (args.head == "auto" and args.kernel != "rbf"):
            params["kernel"] = args.kernel
    else:
        names = ["learning_rate", "epochs", "patience", "batch_size", "units", "dropout"]
        if args.head == "finetune":
            names += ["fine_tune_learning_rate", "fine_tune_epochs", "weights"]
        params.update({n: getattr(args, n) for n in names if getattr(args, n) is not None})
    return params


def train_main(argv: list[str] | None = None, prog: str = "train-head") -> int:
    return console.run(prog, lambda: _train(argv, prog),
                       interrupted="no head was written")


def _train(argv: list[str] | None, prog: str) -> int:
    parser = build_train_parser(prog)
    console.complete(parser)
    args = parser.parse_args(argv)
    if args.fine_tune is not None:
        if args.head not in ("logreg", "finetune"):  # logreg: the default, not a choice made
            parser.error(f"--fine-tune trains a finetune head; got --head {args.head}")
        args.head = "finetune"
    if args.val_cache is None and not 0 < args.val_split < 1:
        parser.error(f"--val-split must be between 0 and 1 (exclusive); got {args.val_split}")
    if args.cv == 1 or args.cv < 0:
        parser.error(f"--cv must be 0 (no selection) or at least 2; got {args.cv}")
    console.setup_logging("info", quiet=args.quiet)

    from classifier.artifact import read_metadata
    from classifier.training import train

    out = args.out or Path("heads") / args.head
    try:
        path = train(args.cache, out, head=args.head, val_cache=args.val_cache,
                     val_split=args.val_split, seed=args.seed, params=_head_params(args),
                     overwrite=args.force, cv=args.cv, tta=args.tta,
                     memory_bytes=int(args.memory_gb * 1e9), cv_rows=args.cv_rows,
                     ood=None if args.ood == "none" else args.ood,
                     false_alarm_rate=args.false_alarm_rate,
                     target_accuracy=args.target_accuracy)
    except (ValueError, RuntimeError, OSError) as exc:  # DataError, SpecMismatchError, CacheError
        return console.fail(prog, exc)
    summary = train_summary(path, read_metadata(path))
    if args.json:
        console.print_json(summary)
    elif not args.quiet:
        print(format_train_summary(summary))
    return 0


def train_summary(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """What `train-head` reports at the end (`--json`), from the head's metadata."""
    selection = meta.get("selection")
    chosen = None
    if selection:
        best = selection["chosen"]
        chosen = {
            "folds": selection["folds"], "candidates": len(selection["candidates"]),
            "kind": best["kind"],
            "params": {k: v for k, v in best["params"].items() if k in ("C", "layers")},
            "cv_accuracy_mean": best["cv_accuracy_mean"],
            "cv_accuracy_std": best["cv_accuracy_std"],
            "rows": selection.get("rows"),
        }
    data, metrics = meta["data"], meta["metrics"]
    return {
        "head": str(path), "kind": meta["kind"], "classes": meta["classes"],
        "features": meta["features"], "views": meta.get("views"), "tta": meta.get("tta"),
        "selection": chosen,
        "train": {"images": data["train_images"], "rows": data["train_size"],
                  "fit_rows": data.get("fit_rows", data["train_size"]),
                  "accuracy": metrics["train"]["accuracy"]},
        "validation": {"images": data["validation_size"], "source": data["validation"],
                       "accuracy": metrics["validation"]["accuracy"]},
        "train_seconds": meta["train_seconds"],
        "ood": {k: meta["ood"][k] for k in ("method", "false_alarm_rate", "cv_false_alarm_rate")
                if k in meta["ood"]} if meta.get("ood") else None,
        "abstention": meta.get("abstention"),
    }


def format_train_summary(s: dict[str, Any]) -> str:
    views = s["views"]
    lines = [
        f"head:       {s['head']} ({s['kind']}, classes: {', '.join(s['classes'])})",
        f"features:   {', '.join(s['features'])}"
        + (f"; averages over {views['count'] + 1} views per image" if s["tta"] else ""),
    ]
    if s["selection"]:
        c = s["selection"]
        lines.append(f"selection:  {c['candidates']} settings, {c['folds']}-fold CV on the "
                     f"training cache ({c['rows']} rows); chosen {c['kind']} {c['params']}: "
                     f"CV accuracy "
                     f"{c['cv_accuracy_mean']:.4f} ± {c['cv_accuracy_std']:.4f}")
    sample = ("" if s["train"]["fit_rows"] == s["train"]["rows"] else
              f", fitted on a stratified sample of {s['train']['fit_rows']} rows (--memory-gb)")
    lines.append(f"train:      {s['train']['images']} images ({s['train']['rows']} rows{sample}),"
                 f" accuracy {s['train']['accuracy']:.4f}, {s['train_seconds']:.1f}s")
    lines.append(f"validation: {s['validation']['images']} images, accuracy "
                 f"{s['validation']['accuracy']:.4f}")
    if s.get("ood"):
        g = s["ood"]
        lines.append(f"ood guard:  {g['method']}, threshold at {100 * g['false_alarm_rate']:g}% "
                     f"false alarms (CV on the training images)")
    if s.get("abstention"):
        a = s["abstention"]
        missed = "" if a["reached"] else f"; target {a['target_accuracy']} not reached"
        lines.append(f"abstention: below confidence {a['threshold']:.4f} (CV accuracy "
                     f"{a['cv_accuracy']:.4f} answering {100 * a['cv_coverage']:.1f}% of "
                     f"images{missed})")
    return "\n".join(lines)


def build_evaluate_parser(prog: str = "evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Evaluate a trained head on a labelled feature cache: accuracy, per-class "
        "precision / recall / F1, ROC AUC (two classes) and the confusion matrix.",
        epilog="The cache must have been extracted the same way as the head's training cache "
        "(weights, input size, layer, preprocessing) and hold only classes the head knows. "
        "Exit status: 0 on success, 1 for unusable input, 2 for bad arguments, 130 when "
        "interrupted.",
    )
    p.add_argument("--head", required=True, type=Path, help="artifact directory (train-head --out)")
    p.add_argument("--cache", required=True, type=Path, help="labelled cache to evaluate on")
    p.add_argument("--json", action="store_true",
                   help="print JSON (accuracy, per_class, roc_auc, confusion_matrix, ...) "
                   "instead of a table")
    p.add_argument("--no-tta", dest="tta", action="store_false",
                   help="predict from each image alone, even when the head was trained on "
                   "augmented views and the cache holds them (default: average over them)")
    p.add_argument("--report", type=Path, metavar="PATH.html|PATH.pdf",
                   help="also write a report a person can open: the head and cache, accuracy "
                   "with its 95%% interval, per-class precision/recall, confusion matrix, ROC, "
                   "reliability and risk-coverage plots, and the most confident mistakes as "
                   "thumbnails. .html: one self-contained file; .pdf: the same via matplotlib")
    console.add_common(p, quiet_help="errors only on stderr (the report still prints)")
    return p


def evaluate_main(argv: list[str] | None = None, prog: str = "evaluate") -> int:
    return console.run(prog, lambda: _evaluate(argv, prog))


def _evaluate(argv: list[str] | None, prog: str) -> int:
    parser = build_evaluate_parser(prog)
    console.complete(parser)
    args = parser.parse_args(argv)
    console.setup_logging("warning", quiet=args.quiet)

    from classifier.evaluation import evaluate_with_predictions
    from classifier.metrics import format_table

    if args.report is not None:
        from classifier.report import check_report_path

        try:
            check_report_path(args.report)
        except ValueError as exc:
            parser.error(str(exc))  # exit 2, before any work
    try:
        result, predictions = evaluate_with_predictions(args.head, args.cache, tta=args.tta)
        if args.report is not None:
            from classifier.artifact import read_metadata
            from classifier.report import write_report

            write_report(args.report, result, predictions, read_metadata(args.head))
            if not args.quiet:
                print(f"report: {args.report}", file=sys.stderr)
    except (ValueError, RuntimeError, OSError) as exc:
        return console.fail(prog, exc)
    if args.json:
        console.print_json(result)
    else:
        views = (f", averaged over {result['views_averaged']} views each"
                 if result["views_averaged"] > 1 else "")
        print(f"head {result['head']} on {result['cache']}: {result['images']} images{views}")
        print(format_table(result, result["classes"]))
        print(format_trust(result))
    return 0


def format_trust(result: dict[str, Any]) -> str:
    """evaluate's risk-coverage lines and, for a head with a guard, its out-of-distribution
    share."""
    rc = result["risk_coverage"]
    cells = "  ".join(f"{100 * c:.0f}%: {a:.4f}" for c, a in zip(rc["coverage"], rc["accuracy"],
                                                                   strict=True) if a is not None)
    lines = [f"risk-coverage (accuracy answering the most confident share): {cells}",
             f"  area under the risk-coverage curve (AURC, lower is better): "
             f"{rc['aurc']:.4f}" if rc["aurc"] is not None else "  AURC: no images"]
    if result.get("abstention"):
        a = result["abstention"]
        lines.append(f"abstention below confidence {a['threshold']:.4f}: answered "
                     f"{a['answered']}/{result['images']} images, accuracy {a['accuracy']}")
    if result.get("ood"):
        o = result["ood"]
        lines.append(f"out of distribution: {o['flagged']}/{result['images']} images "
                     f"({100 * o['rate']:.1f}%; the guard's threshold flags "
                     f"{100 * o['false_alarm_rate']:g}% of training images), median ood_score "
                     f"{o['median_score']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(train_main())
