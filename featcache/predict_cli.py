"""`predict`: label every image in a folder with a trained head, offline (local or Ray).

Moved here from classifier/predict_cli.py (issue 17, item 3): it drives an extraction engine,
which classifier may not import. The `predict` script's entry point is now
`featcache.predict_cli:main`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from extractor import console
from extractor.cli import add_engine_args

EPILOG = """\
Every file under DIR (recursively) gets one row: path, label (the predicted class), one
probability column per class (p_<class>) and error (why a file could not be used; its other
columns are then empty). A head with an out-of-distribution guard or an abstention threshold
(train-head's default guard; --target-accuracy) adds ood_score (1.0 is the guard's threshold),
in_distribution and abstained (its label is then empty). --out ending in .jsonl writes one
JSON object per line instead.

Features are cached in --cache (default DIR/.featcache/<settings>.h5, hidden from the folder
scan): a second run over the same folder extracts only new files, then predicts. Pass
--cache PATH to reuse a cache made by extract from the same folder, or when DIR is read-only.

A head trained on augmented views (extract --augment K) gets the same K views of every file
extracted, and its probabilities are averaged over them: K+1 forward passes per file. --no-tta
predicts from each file alone (one pass per file).

Progress shows on a terminal only. Exit status: 0 when every file got a prediction or an error
row, 1 when the run failed, 2 for bad arguments, 130 when interrupted (extraction progress is
kept in the cache).
"""


def build_parser(prog: str = "predict") -> argparse.ArgumentParser:
    from extractor.backbone import AUTO, PRECISIONS, RUNTIMES

    p = argparse.ArgumentParser(
        prog=prog,
        description="Predict the class of every image in a folder with a trained head, "
        "writing a CSV or JSON Lines file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--head", required=True, type=Path, help="artifact directory (train-head --out)")
    p.add_argument("--dir", required=True, type=Path,
                   help="folder of images (searched recursively)")
    p.add_argument("--out", type=Path, default=Path("predictions.csv"),
                   help="predictions file, .csv or .jsonl (default: %(default)s)")
    p.add_argument("--cache", type=Path, default=None,
                   help="feature cache of DIR to reuse or create (default: "
                   "DIR/.featcache/<settings>.h5)")
    p.add_argument("--weights", default=None,
                   help="VGG16 no-top weights the head was trained on (default: "
                   "$FEATCACHE_WEIGHTS, else imagenet); checked against the head")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--runtime", choices=(AUTO, *RUNTIMES), default=AUTO,
                   help="what runs the conv base, as for extract (default: %(default)s)")
    p.add_argument("--no-tta", dest="tta", action="store_false",
                   help="predict from each file alone, even with a head trained on augmented "
                   "views (default: average over the same views, K+1 forward passes per file)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="conv base arithmetic; must be the head's (default: the head's: int8 "
                   "heads run the int8 model they were trained with, found by its hash)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress and no summary; errors only")
    console.add_common(p, json_help="print the end-of-run counts as JSON on stdout (even with "
                       "-q): files, predicted, errors, the predictions file and the cache")
    add_engine_args(p)
    return p


def main(argv: list[str] | None = None, prog: str = "predict") -> int:
    return console.run(prog, lambda: _main(argv, prog),
                       interrupted="extraction progress is saved in the cache")


def _main(argv: list[str] | None, prog: str) -> int:
    parser = build_parser(prog)
    console.complete(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1; got {args.batch_size}")
    if args.out.suffix.lower() not in (".csv", ".jsonl"):
        parser.error(f"--out must end in .csv or .jsonl; got {args.out}")
    console.setup_logging("warning", quiet=args.quiet)

    from classifier.artifact import load_head
    from classifier.predict import predict_cache, write_predictions
    from extractor.ray_engine import RayOptions
    from featcache.predict_folder import default_cache, extract_for_head

    progress = console.show_progress(args.quiet)
    try:
        head = load_head(args.head)
        if not args.dir.is_dir():
            raise NotADirectoryError(f"--dir must be a folder of images; {args.dir} is not")
        cache = args.cache or default_cache(args.dir, head, args.tta)
        extract_for_head(
            head, args.dir, cache, weights=args.weights, batch_size=args.batch_size,
            progress=progress, engine=args.engine, runtime=args.runtime, precision=args.precision,
            ray_options=RayOptions(args.address, args.actors, args.shards_dir,
                                   args.self_contained),
            tta=args.tta,
        )
        predictions = predict_cache(head, cache, args.dir, progress=progress, tta=args.tta)
        write_predictions(predictions, head.classes_, args.out,
                          trust=head.detector is not None or head.abstain_below is not None)
    except (ValueError, RuntimeError, OSError) as exc:
        return console.fail(prog, exc)
    errors = sum(1 for p in predictions if p.error is not None)
    counts = {"files": len(predictions), "predicted": len(predictions) - errors,
              "errors": errors, "out": str(args.out), "cache": str(cache)}
    if args.json:
        console.print_json(counts)
    elif not args.quiet:
        print(f"{prog}: {counts['files']} files, {counts['predicted']} predicted, "
              f"{errors} with errors -> {args.out} (cache {cache})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
