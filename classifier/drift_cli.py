"""`featcache drift`: compare a new cache with a head's training images."""

from __future__ import annotations

import argparse
from pathlib import Path

from extractor import console

EPILOG = """\
Reports, for the images of --cache (each image itself; augmented views are left out):
  - the share the head's out-of-distribution guard flags (about its false-alarm rate, 1% by
    default, when the images are like the training images);
  - the head's predicted-class mix against the training set's class shares;
  - an MMD two-sample test between the pooled vectors of the training images (the sample
    the guard keeps in the head) and of the new images: a small p-value says the two differ.
The head must have a guard (train-head --ood, the default); the cache must be extracted the
same way as the training cache. The cache may be unlabelled. Exit status: 0 measured, 1
unusable input, 2 bad arguments, 130 interrupted.
"""


def build_parser(prog: str = "featcache drift") -> argparse.ArgumentParser:
    from classifier.drift import DEFAULT_MAX_ROWS, DEFAULT_PERMUTATIONS

    p = argparse.ArgumentParser(
        prog=prog, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure drift of a new feature cache against a head's training images: "
        "out-of-distribution share, predicted-class mix, MMD two-sample test.",
    )
    p.add_argument("--head", required=True, type=Path, help="head folder (train-head --out)")
    p.add_argument("--cache", required=True, type=Path, help="the new cache (.h5)")
    p.add_argument("--permutations", type=int, default=DEFAULT_PERMUTATIONS,
                   help="permutations of the MMD test's p-value (default: %(default)s)")
    p.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS,
                   help="vectors drawn from each side for the MMD test (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsampling and "
                   "permutations (default: %(default)s)")
    console.add_common(p, json_help="print the report as JSON", quiet_help="errors only on "
                       "stderr (the report still prints)")
    return p


def main(argv: list[str] | None = None, prog: str = "featcache drift") -> int:
    return console.run(prog, lambda: _main(argv, prog))


def _main(argv: list[str] | None, prog: str) -> int:
    parser = build_parser(prog)
    console.complete(parser)
    args = parser.parse_args(argv)
    if args.permutations < 1:
        parser.error(f"--permutations must be at least 1; got {args.permutations}")
    if args.max_rows < 2:
        parser.error(f"--max-rows must be at least 2; got {args.max_rows}")
    console.setup_logging("warning", quiet=args.quiet)

    from classifier.drift import drift, format_drift

    try:
        report = drift(args.head, args.cache, permutations=args.permutations,
                       max_rows=args.max_rows, seed=args.seed)
    except (ValueError, RuntimeError, OSError) as exc:
        return console.fail(prog, exc)
    if args.json:
        console.print_json(report)
    else:
        print(format_drift(report))
    return 0
