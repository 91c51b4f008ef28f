"""`extract`: turn a folder of images into a VGG16 feature cache."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from extractor import console

if TYPE_CHECKING:
    from extractor.planner import Summary

PRECISION_ENV = "FEATCACHE_PRECISION"

EPILOG = """\
Layout: DIR holds one sub-folder per class (DIR/cats/*.jpg, DIR/dogs/*.jpg), classes sorted by
name as Keras's image_dataset_from_directory does; a flat DIR with no sub-folders gives an
unlabelled cache (label -1), for prediction.

Re-running the same command resumes an interrupted run and extracts only files added since;
rows of files removed from DIR are dropped. Files that are not usable images are recorded in the
cache (/skipped) with the reason and listed at the end; they never stop the run.

Weights: 'imagenet' (default) is the file Keras downloads into ~/.keras/models. Offline, pass
--weights PATH to the ImageNet no-top file or set {weights_env}.

int8: --precision int8 runs a quantized conv base, about 4x faster on CPUs with VNNI (refused
on CPUs without it unless FEATCACHE_INT8_REDUCE_RANGE=1); features within cosine 0.99 of fp32.
The int8 model is built once per weights, input size and onnxruntime version (up to a minute),
calibrated on photos bundled with scikit-learn, and kept beside the ONNX export, so extracting
another folder, training and serving use the same model. A cache, a head and the server never
mix precisions or int8 models.

Progress (count, images/s, ETA) shows on a terminal only. Exit status: 0 when the cache holds at
least one image, 1 when it holds none or the run failed, 2 for bad arguments, 130 when
interrupted (run again to resume).
"""


def build_parser(prog: str = "extract") -> argparse.ArgumentParser:
    # Here, not at the top: numpy and Pillow load only once a command runs, so Ctrl-C is ours
    # (console.run) from the command's first moment.
    from extractor.backbone import AUTO, PRECISIONS, RUNTIMES
    from extractor.features import DEFAULT_POOLED_LAYERS
    from extractor.vgg16 import DEFAULT_IMAGE_SIZE, DEFAULT_LAYER, LAYERS
    from extractor.weights import WEIGHTS_ENV

    p = argparse.ArgumentParser(
        prog=prog,
        description="Run the VGG16 conv base over a folder of images and write the features "
        "to an HDF5 cache.",
        epilog=EPILOG.format(weights_env=WEIGHTS_ENV),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dir", required=True, type=Path, help="folder of images (see layout below)")
    p.add_argument("--out", type=Path, default=Path("feats.h5"),
                   help="cache file to create or extend (default: %(default)s)")
    p.add_argument("--weights", default=None,
                   help=f"'imagenet' or a path to VGG16 no-top weights (default: ${WEIGHTS_ENV} "
                   "if set, else imagenet)")
    p.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                   help="square input size in pixels (default: %(default)s -> 4x4x512 features)")
    p.add_argument("--layer", choices=LAYERS, default=DEFAULT_LAYER,
                   help="layer whose output is cached (default: %(default)s)")
    p.add_argument("--pooled-layers", type=pooled_layers, default=None,
                   metavar="LAYER[,LAYER...]|none",
                   help="also store the global average and max pooled vectors of these layers "
                   f"(of {', '.join(LAYERS)}), from the same forward pass, or none (default: "
                   "those of the existing cache; for a new cache "
                   f"{','.join(DEFAULT_POOLED_LAYERS)})")
    p.add_argument("--batch-size", type=int, default=16,
                   help="images per forward pass (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2,
                   help="threads decoding images ahead of the model (default: %(default)s)")
    p.add_argument("--runtime", choices=(AUTO, *RUNTIMES), default=AUTO,
                   help="what runs the conv base: keras, onnxruntime (the Keras model exported "
                   "to ONNX, cached by weights hash; the faster, see BENCHMARKS.md), or auto = "
                   "onnxruntime when installed, else keras (default: %(default)s); the features "
                   "are the same within 1e-3")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="fp32: features equal to Keras; int8: the quantized model, ~4x faster "
                   "on CPUs with VNNI, features within cosine 0.99 of fp32 (default: "
                   f"${PRECISION_ENV} if set, else fp32)")
    p.add_argument("--calibration", type=Path, default=None, metavar="DIR",
                   help="int8 only: calibrate a new int8 model on up to 64 images of DIR instead "
                   "of the bundled photos; every later extract into the same cache, and "
                   "serve, then need that model (found by hash on this machine)")
    p.add_argument("--threads", type=int, default=None,
                   help="onnxruntime threads for the forward pass (default: the CPUs this "
                   "process may use)")
    p.add_argument("--augment", type=int, default=0, metavar="K",
                   help="also store K randomly augmented views of every image (the recipe's "
                   "rotations, shifts, shear, zoom and flips), for training heads with "
                   "augmentation at the cost of one forward pass per view; deterministic per "
                   "image and --augment-seed (default: %(default)s)")
    p.add_argument("--augment-seed", type=int, default=0,
                   help="seed of the augmented views (default: %(default)s)")
    p.add_argument("--augment-mode", choices=("recipe", "dihedral", "flips"), default="recipe",
                   help="recipe: rotations up to 40 degrees, shifts, shear, zoom, flips; "
                   "dihedral: flips and quarter turns only (K at most 7), for images with no "
                   "canonical orientation; flips: the mirror image only (K = 1), for photos "
                   "that have an up (default: %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=512, metavar="N",
                   help="save progress every N files (and at least every minute) so an "
                   "interrupted run loses little (default: %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no summary; errors only")
    console.add_common(p, json_help="print the end-of-run summary as JSON on stdout (even "
                       "with -q): images, extracted, duplicates, skipped files and why, "
                       "images/s, ...")
    add_engine_args(p)
    return p


def pooled_layers(value: str) -> tuple[str, ...]:
    """`--pooled-layers`: comma-separated layer names, or `none`."""
    from extractor.vgg16 import LAYERS

    if value.strip().lower() == "none":
        return ()
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [n for n in names if n not in LAYERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"choose layers among {', '.join(LAYERS)} (comma-separated) or none; got {value!r}")
    return names


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """--engine and the Ray options (shared with `predict`); README, "Running on a cluster"."""
    g = p.add_argument_group("engine (README: Running on a cluster)")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process; ray: a Ray cluster (pip install 'featcache[ray]')"
                   " (default: %(default)s)")
    g.add_argument("--address", default=None,
                   help="Ray cluster to join (ray://HOST:10001, HOST:6379 or auto; default: "
                   "$RAY_ADDRESS if set, else a local Ray started for this run)")
    g.add_argument("--actors", type=int, default=None, metavar="N",
                   help="model actors on Ray (default: one per node)")
    g.add_argument("--shards-dir", type=Path, default=None, metavar="DIR",
                   help="where Ray writes shards (default: OUT.shards beside the cache); must "
                   "be storage every node and the driver can read")
    g.add_argument("--self-contained", action="store_true",
                   help="with Ray: copy the features into OUT and delete the shards, so OUT can "
                   "be moved alone (default: OUT maps its rows onto the shards)")


def main(argv: list[str] | None = None, prog: str = "extract") -> int:
    return console.run(prog, lambda: _main(argv, prog),
                       interrupted="progress is saved, run the same command again to resume")


def _main(argv: list[str] | None, prog: str) -> int:
    parser = build_parser(prog)
    console.complete(parser)
    args = parser.parse_args(argv)
    if args.actors is not None and args.actors < 1:
        parser.error(f"--actors must be at least 1; got {args.actors}")
    from extractor.backbone import PRECISIONS

    precision = args.precision or os.environ.get(PRECISION_ENV) or "fp32"
    if precision not in PRECISIONS:
        parser.error(f"{PRECISION_ENV} must be one of {', '.join(PRECISIONS)}; got "
                     f"{precision!r}")
    if args.calibration is not None and precision != "int8":
        parser.error("--calibration applies to --precision int8 only")
    if args.calibration is not None and not args.calibration.is_dir():
        parser.error(f"--calibration must be a folder of images; got {args.calibration}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1; got {args.threads}")
    for name in ("batch_size", "workers", "checkpoint_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1; "
                         f"got {getattr(args, name)}")
    if args.augment < 0:
        parser.error(f"--augment must be 0 or more; got {args.augment}")
    if args.augment:
        from extractor.augment import check

        try:
            check(args.augment_mode, args.augment)
        except ValueError as exc:
            parser.error(str(exc))
    console.setup_logging("warning", quiet=args.quiet)

    from extractor.cache import CacheError
    from extractor.planner import ExtractError, Options
    from extractor.runner import run
    from extractor.runtimes.int8 import Int8Error
    from extractor.runtimes.onnx_export import ExportError
    from extractor.weights import WeightsError

    opts = Options(
        directory=args.dir, out=args.out, weights=args.weights, image_size=args.image_size,
        layer=args.layer, batch_size=args.batch_size, workers=args.workers,
        checkpoint_every=args.checkpoint_every, progress=console.show_progress(args.quiet),
        runtime=args.runtime, augment=args.augment, augment_seed=args.augment_seed,
        augment_mode=args.augment_mode, pooled_layers=args.pooled_layers,
        precision=precision, calibration=args.calibration, threads=args.threads,
    )
    try:
        if args.engine == "ray":
            from extractor.ray_engine import RayOptions
            from extractor.ray_engine import run as run_ray

            summary = run_ray(opts, RayOptions(args.address, args.actors, args.shards_dir,
                                               args.self_contained))
        else:
            summary = run(opts)
    except (ExtractError, WeightsError, CacheError, Int8Error, ExportError) as exc:
        return console.fail(prog, exc)
    except OSError as exc:
        return console.fail(prog, f"{exc} (progress so far is saved; fix the cause and run the "
                            "same command again to resume)")

    if args.json:
        console.print_json(summary_dict(summary))
    elif not args.quiet:
        print(format_summary(summary))
    if summary.total == 0:
        return console.fail(prog, f"no image could be cached from {args.dir}")
    return 0


def summary_dict(s: Summary) -> dict[str, Any]:
    """`--json`: the end-of-run summary (`extractor.runner.Summary`) as plain JSON values."""
    return {
        "cache": str(s.out), "images": s.total, "classes": list(s.class_names),
        "extracted": s.extracted, "duplicates": s.duplicates,
        "already_cached": s.already_cached, "changed": sorted(s.changed), "removed": s.removed,
        "skipped": [{"path": path, "reason": reason} for path, reason in s.skipped],
        "elapsed_s": round(s.elapsed_s, 3), "extract_s": round(s.extract_s, 3),
        "images_per_s": round(s.images_per_s, 3), "runtime": s.runtime,
        "precision": s.precision,
    }


def format_summary(s: Summary) -> str:
    classes = ", ".join(s.class_names) if s.class_names else "none (unlabelled)"
    lines = [
        f"cache:      {s.out} ({s.total} images; classes: {classes})",
        f"extracted:  {s.extracted} images at {s.images_per_s:.1f} images/s "
        f"({s.elapsed_s:.1f}s in all, model loading included; runtime {s.runtime} "
        f"{s.precision})",
        f"duplicates: {s.duplicates} (same bytes as an image already extracted; features shared)",
        f"unchanged:  {s.already_cached} already cached; {len(s.changed)} changed since and "
        f"extracted again; {s.removed} dropped (files gone from the folder)",
        f"skipped:    {len(s.skipped)}",
    ]
    for path, reason in s.skipped[:20]:
        lines.append(f"  {path}: {reason}")
    if len(s.skipped) > 20:
        lines.append(f"  ... and {len(s.skipped) - 20} more (all listed in the cache's /skipped)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
