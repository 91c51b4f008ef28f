"""`featcache explain`: where a head's predictions came from, as heatmaps over the images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from extractor import console

EPILOG = """\
For each IMAGE, DIR/<name>.png is the image (at the head's input size) with the heatmap of the
predicted class over it, and DIR/<name>.npy the heatmap itself: a float32 (size, size) array,
each pixel's contribution to the class's score (positive: for the class). <name> is the image's
file name without its suffix (made unique when two images share it).

Heads on pooled vectors (logreg, svm) are explained by gradient x activation through their
pooling and scaling, in numpy; Keras heads (dense, finetune) by Grad-CAM. A head trained on
augmented views explains each view and maps its heatmap back onto the image (--no-tta: the
image alone).

Exit status: 0 when every image was explained, 1 when one could not be (the others are still
written; the summary lists why), 2 for bad arguments, 130 when interrupted.
"""


def build_parser(prog: str = "featcache explain") -> argparse.ArgumentParser:
    from extractor.backbone import AUTO, RUNTIMES

    p = argparse.ArgumentParser(
        prog=prog,
        description="Show where a head's prediction of each image came from: a heatmap over "
        "the image (PNG overlay) and its values (.npy).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--head", required=True, type=Path, help="artifact directory (train-head --out)")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    p.add_argument("--out", required=True, type=Path,
                   help="folder for the overlays (.png) and heatmaps (.npy); created if missing")
    p.add_argument("--weights", default=None,
                   help="VGG16 no-top weights the head was trained on (default: "
                   "$FEATCACHE_WEIGHTS, else imagenet); checked against the head")
    p.add_argument("--runtime", choices=(AUTO, *RUNTIMES), default=AUTO,
                   help="what runs the conv base, as for extract (default: %(default)s)")
    p.add_argument("--no-tta", dest="tta", action="store_false",
                   help="explain each image alone, even with a head trained on augmented views")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary; errors only")
    console.add_common(p, json_help="print a summary as JSON on stdout (even with -q): each "
                       "image's label, method and files, and errors")
    return p


def main(argv: list[str] | None = None, prog: str = "featcache explain") -> int:
    return console.run(prog, lambda: _main(argv, prog))


def _names(images: list[Path]) -> list[str]:
    """Output names: each file's stem, with -2, -3, ... where stems repeat."""
    seen: dict[str, int] = {}
    out = []
    for path in images:
        seen[path.stem] = seen.get(path.stem, 0) + 1
        out.append(path.stem if seen[path.stem] == 1 else f"{path.stem}-{seen[path.stem]}")
    return out


def _main(argv: list[str] | None, prog: str) -> int:
    parser = build_parser(prog)
    console.complete(parser)
    args = parser.parse_args(argv)
    console.setup_logging("warning", quiet=args.quiet)

    import numpy as np

    from featcache.api import load_head

    try:
        clf = load_head(args.head, weights=args.weights, runtime=args.runtime, tta=args.tta)
        args.out.mkdir(parents=True, exist_ok=True)
    except (ValueError, RuntimeError, OSError) as exc:
        return console.fail(prog, exc)
    results: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for path, name in zip(args.images, _names(args.images), strict=True):
        try:
            explanation = clf.explain(path)
        except (ValueError, OSError) as exc:  # unreadable or not an image
            errors.append({"image": str(path), "error": str(exc)})
            continue
        png, npy = args.out / f"{name}.png", args.out / f"{name}.npy"
        explanation.overlay.save(png)
        np.save(npy, explanation.grid)
        results.append({"image": str(path), "label": explanation.label,
                        "method": explanation.method, "overlay": str(png), "grid": str(npy)})
    summary = {"head": clf.name, "explained": len(results), "errors": errors,
               "images": results, "out": str(args.out)}
    if args.json:
        console.print_json(summary)
    elif not args.quiet:
        for r in results:
            print(f"{r['image']}: {r['label']} -> {r['overlay']}")
        print(f"{prog}: {len(results)} explained, {len(errors)} errors -> {args.out}")
    for e in errors:
        print(f"{prog}: {e['image']}: {e['error']}", file=sys.stderr)
    return 1 if errors else 0
