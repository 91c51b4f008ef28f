"""`featcache compact`: rewrite an appended-to cache as one file, reclaiming dead rows."""

from __future__ import annotations

import argparse
from pathlib import Path

from extractor import console

EPILOG = """\
extract appends: a run that adds files writes their rows to a new file in CACHE.rows/ and
rewrites only the small index (CACHE itself). Rows of files deleted or changed since leave the
index at once but keep their space (dead rows) until compaction. extract compacts on its own
the row files holding dead rows once those pass 25% of the rows on disk; this command
rewrites everything now: CACHE becomes one self-contained file (rows sorted by path, equal to
a fresh extraction of the same files) and CACHE.rows/ is deleted. It needs free disk for one
copy of the live rows. Holds the same lock as extract: refused while an extract writes CACHE.

Exit status: 0 compacted, 1 failed (CACHE is left as it was), 2 bad arguments, 130
interrupted (CACHE is left as it was).
"""


def build_parser(prog: str = "featcache compact") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Reclaim the space of dead rows: rewrite a feature cache that "
        "extract appended to as one self-contained file.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("cache", type=Path, metavar="CACHE", help="the cache file (.h5) to compact")
    console.add_common(p, json_help="print the summary as JSON on stdout")
    return p


def main(argv: list[str] | None = None, prog: str = "featcache compact") -> int:
    return console.run(prog, lambda: _main(argv, prog),
                       interrupted="the cache is left as it was")


def _main(argv: list[str] | None, prog: str) -> int:
    parser = build_parser(prog)
    console.complete(parser)
    args = parser.parse_args(argv)
    console.setup_logging("warning", quiet=args.quiet)

    from extractor.cache import CacheError
    from extractor.cache.rows import compact
    from extractor.planner import ExtractError, lock_output

    try:
        with lock_output(args.cache):
            summary = compact(args.cache)
    except (CacheError, ExtractError, OSError) as exc:
        return console.fail(prog, exc)
    document = {"cache": str(summary.cache), "rows": summary.rows,
                "dead_rows": summary.dead_rows, "bytes_before": summary.bytes_before,
                "bytes_after": summary.bytes_after}
    if args.json:
        console.print_json(document)
    elif not args.quiet:
        print(f"compacted {summary.cache}: {summary.rows} rows, {summary.dead_rows} dead rows "
              f"reclaimed; {summary.bytes_before / 1e6:.1f} MB -> "
              f"{summary.bytes_after / 1e6:.1f} MB on disk")
    return 0
