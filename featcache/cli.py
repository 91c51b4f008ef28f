"""`featcache`: one command for every step, `featcache extract|train-head|evaluate|predict|serve`,
plus `featcache info FILE` and `featcache explain`.

Each subcommand is the stage's own command, not a copy: its parser is built by the stage's
parser builder (`extractor.cli.build_parser`, ...) and `featcache NAME ARGS` runs the stage's
`main(ARGS, prog="featcache NAME")`, the very function behind the `NAME` script. So flags,
checks, output and exit status are the same both ways, and a flag added to a stage's parser
appears in both.

argparse, not click or typer: the stage parsers exist, other modules add flags to them
(`extractor.cli.add_engine_args` is shared with `predict`), and argcomplete completes argparse
parsers as they are, subcommands included.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from extractor import console

#: name -> (module, parser builder, main, one-line help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "extract": ("extractor.cli", "build_parser", "main",
                "images -> VGG16 features in an HDF5 cache"),
    "train-head": ("classifier.cli", "build_train_parser", "train_main",
                   "train a classifier head on a cache"),
    "evaluate": ("classifier.cli", "build_evaluate_parser", "evaluate_main",
                 "a head's metrics on a labelled cache"),
    "predict": ("featcache.predict_cli", "build_parser", "main",
                "label every image in a folder (CSV or JSON Lines)"),
    "serve": ("service.cli", "build_parser", "main",
              "serve heads over HTTP"),
    "info": ("featcache.cli", "build_info_parser", "info_main",
             "describe a feature cache or a head"),
    "compact": ("extractor.compact_cli", "build_parser", "main",
                "rewrite an appended-to cache as one file, reclaiming dead rows"),
    "explain": ("featcache.explain_cli", "build_parser", "main",
                "heatmaps of where a head's predictions came from"),
    "drift": ("classifier.drift_cli", "build_parser", "main",
              "compare a new cache with a head's training images"),
}

EPILOG = """\
Each command is also installed on its own: extract, train-head, evaluate, predict and serve
are the same commands as featcache extract, ... (same flags, output and exit status).
'featcache COMMAND --help' shows a command's flags.

Every command takes --version and -q; all but serve take --json (the end-of-run summary as
JSON on stdout). Progress bars show on a terminal only. Exit status: 0 done, 1 failed (one
line on stderr), 2 bad arguments, 130 interrupted (Ctrl-C).

Tab completion (bash, zsh): eval "$(register-python-argcomplete featcache)"
"""


def _stage(name: str) -> tuple[Callable[..., argparse.ArgumentParser], Callable[..., int]]:
    module_name, builder, main_name, _ = COMMANDS[name]
    module = importlib.import_module(module_name)
    return getattr(module, builder), getattr(module, main_name)


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree (for --help and completion), from the stages' own builders."""
    p = argparse.ArgumentParser(
        prog="featcache",
        description="Transfer learning on images: VGG16 features in an HDF5 cache, classifier "
        "heads trained on it, served over HTTP.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {console.version()}",
                   help="print the featcache version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, _, _, summary) in COMMANDS.items():
        builder, _ = _stage(name)
        own = builder(f"featcache {name}")
        sub.add_parser(name, parents=[own], add_help=False, help=summary,
                       description=own.description, epilog=own.epilog,
                       formatter_class=own.formatter_class)
    return p


def main(argv: list[str] | None = None) -> int:
    return console.run("featcache", lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    # A completion request (argcomplete reads the command line from the environment) needs
    # the whole tree; a run needs only its stage's module.
    if argv and argv[0] in COMMANDS and "_ARGCOMPLETE" not in os.environ:
        _, stage_main = _stage(argv[0])
        return stage_main(argv[1:], prog=f"featcache {argv[0]}")
    parser = build_parser()
    console.complete(parser)
    parser.parse_args(argv)  # --help, --version and usage errors exit here
    parser.print_usage(sys.stderr)
    return console.EXIT_USAGE


def build_info_parser(prog: str = "featcache info") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Describe a feature cache (datasets with shapes, dtypes and dimension "
        "names; rows, images and views; classes; feature spec; pooled layers; precision; "
        "skipped files) or a head folder (kind, classes, features, views, spec, metrics, "
        "the cross-validation choice).",
        epilog="Reads metadata only, never the features or the model. Exit status: 0 "
        "described, 1 not a cache or a head, 2 bad arguments, 130 interrupted.",
    )
    p.add_argument("path", type=Path, metavar="FILE",
                   help="a cache (.h5, from extract) or a head folder (from train-head)")
    console.add_common(p, json_help="print the description as JSON (every skipped file, every "
                       "CV candidate)", quiet_help="errors only on stderr (the description "
                       "still prints)")
    return p


def info_main(argv: list[str] | None = None, prog: str = "featcache info") -> int:
    return console.run(prog, lambda: _info(argv, prog))


def _info(argv: list[str] | None, prog: str) -> int:
    parser = build_info_parser(prog)
    console.complete(parser)
    args = parser.parse_args(argv)
    console.setup_logging("warning", quiet=args.quiet)

    from featcache.info import describe, format_description

    try:
        description = describe(args.path)
    except (ValueError, RuntimeError, OSError) as exc:  # InfoError, CacheError, ArtifactError
        return console.fail(prog, f"{exc} (FILE must be a cache made by extract or a head "
                            "folder made by train-head)")
    if args.json:
        console.print_json(description)
    else:
        print(format_description(description))
    return 0
