"""What every command shares: logging, progress, --version, --json, exit codes, completion.

Every entry point (`extract`, `train-head`, `evaluate`, `predict`, `serve` and the `featcache`
command that groups them) goes through this module, so they behave alike:

- exit status 0 done, 1 failed (one line on stderr), 2 bad arguments, 130 interrupted: Ctrl-C
  at any moment after the command's module is imported, TensorFlow's import included, prints
  one line, never a traceback (`run`);
- `--version` prints the package version; `--json` prints the end-of-run summary as one JSON
  document on stdout (`add_common`, `print_json`);
- `-q` leaves errors only on stderr; progress bars show only on a terminal (`show_progress`);
- logging is configured here and nowhere else (`setup_logging`): library modules only log.

It lives in `extractor`, the package every stage imports, so each stage's command runs with
that stage's packages alone (the serving image ships `extractor`, `classifier` and `service`).
It imports nothing heavy: `--help` and `--version` stay instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Libraries whose INFO/DEBUG chatter is never ours to show.
_NOISY = ("h5py", "matplotlib", "PIL", "urllib3", "httpx", "absl")


def version() -> str:
    from extractor import __version__

    return __version__


def add_common(parser: argparse.ArgumentParser, *, json_help: str | None = None,
               quiet_help: str = "errors only: no progress, no summary") -> None:
    """`--version`, `-q/--quiet` and (when `json_help` is given) `--json` on `parser`."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}",
                        help="print the featcache version and exit")
    if not any("--quiet" in a.option_strings for a in parser._actions):
        parser.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    if json_help is not None:
        parser.add_argument("--json", action="store_true", help=json_help)


def setup_logging(level: str | int = "warning", *, quiet: bool = False,
                  timestamps: bool = False) -> None:
    """The one logging set-up of every command: records to stderr at `level` (ERROR with
    `quiet`), as `LEVEL: message`, or with the time and logger name for the server's log."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    if quiet:
        level = logging.ERROR
    elif isinstance(level, str):
        level = logging.getLevelName(level.upper())
    fmt = ("%(asctime)s %(levelname)s %(name)s: %(message)s" if timestamps
           else "%(levelname)s: %(message)s")
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(logging.WARNING, int(level)))


def show_progress(quiet: bool = False) -> bool:
    """Progress bars only for a person watching: on a terminal, and not with `-q`."""
    return not quiet and sys.stderr.isatty()


def print_json(document: Any) -> None:
    """The end-of-run summary of `--json`: one JSON document on stdout (standard JSON: a
    NaN, such as the accuracy of no images, is written as null)."""
    print(json.dumps(_finite(document), indent=2, allow_nan=False, default=str))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def complete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's tab-completion request, if this run is one (argcomplete; README,
    "Shell completion"). Does nothing, and imports nothing, otherwise."""
    if "_ARGCOMPLETE" in os.environ:
        import argcomplete

        argcomplete.autocomplete(parser)


def fail(prog: str, message: object) -> int:
    """A failure the user can act on: one line on stderr, exit status 1."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_FAILED


def run(prog: str, body: Callable[[], int], *, interrupted: str = "") -> int:
    """Run a command's body and turn Ctrl-C into exit status 130 with one line, no traceback.

    A second Ctrl-C while the process winds down kills it at once (the shell still sees 130).
    """
    try:
        return body()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        print(f"\n{prog}: interrupted" + (f"; {interrupted}" if interrupted else ""),
              file=sys.stderr)
        return EXIT_INTERRUPTED
