"""int8 weight schemes on this CPU: fidelity to fp32 and forward-pass speed, layer by layer.

How `extractor.runtimes.int8.PORTABLE` was chosen (issue 18). Every model here uses the
product's recipe (calibration on the bundled photos, widened ranges, quantize_static QDQ
per-channel); only the weight format of each conv layer differs:

    schemes   whole-model schemes: all s8, all u8, all s7, u8 with the first conv layer in fp32,
              and the product's s8 and portable schemes
    screen    one layer at a time in 7-bit signed weights on top of "u8, first conv fp32":
              what each layer's 7-bit weights cost in fidelity
    combos    the layers given with --s7 (comma-separated) in 7-bit on the same base

Fidelity: cosine of each image's block5_pool maps (and avg+max pooled block3-5 vectors) to fp32
on the first --limit ELPV validation images (all 356 by default), worst and mean. Speed: one
batch of 16 images, best of --reps, side by side with fp32 in the same run, as a ratio.

A layer's weights are quantized independently of the others (the activation ranges are fixed
beforehand), so `screen` and `combos` splice the weights of one layer from the all-s7 model into
the u8 one instead of quantizing again: the same bytes quantize_static makes for that scheme.

    .venv/bin/python benchmarks/int8_schemes.py --parts schemes,screen [--limit 60]
    .venv/bin/python benchmarks/int8_schemes.py --parts combos \
        --s7 block1_conv2,block2_conv2,block3_conv2
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np
from _common import ELPV, WEIGHTS, machine

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="schemes,screen")
    ap.add_argument("--limit", type=int, default=0, help="validation images (0: all)")
    ap.add_argument("--s7", action="append", default=[],
                    help="combos: layers in 7-bit, comma-separated (repeat for several)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from extractor.images import decode_image
    from extractor.runtimes import int8, onnx_export
    from extractor.runtimes.cpu import detect
    from extractor.runtimes.ort import OnnxSession
    from extractor.vgg16 import preprocess

    print(machine(), flush=True)
    print("CPU:", detect().describe(), flush=True)
    sha = hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    fp32_model, _ = onnx_export.load_or_export(WEIGHTS, sha, int8.TAPS, 150)
    fp32_bytes = fp32_model.read_bytes() if isinstance(fp32_model, Path) else fp32_model
    calib = int8.default_calibration(150)
    ranges = int8.calibration_ranges(fp32_bytes, calib, args.threads)
    files = sorted((ELPV / "validation").glob("*/*.png"))
    if args.limit:
        files = files[:: max(1, len(files) // args.limit)][: args.limit]
    x = preprocess(np.stack([decode_image(f.read_bytes(), 150) for f in files]))
    print(f"{len(files)} ELPV validation images", flush=True)

    def outputs(session: OnnxSession) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(x), 16):
            for k, v in session(x[i : i + 16]).items():
                parts.setdefault(k, []).append(v)
        return {k: np.concatenate(v) for k, v in parts.items()}

    def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a = a.reshape(len(a), -1).astype(np.float64)
        b = b.reshape(len(b), -1).astype(np.float64)
        return np.asarray((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))

    def pooled(m: np.ndarray) -> np.ndarray:
        return np.concatenate([m.mean((1, 2)), m.max((1, 2))], 1)

    def speed(session: OnnxSession) -> float:
        batch = x[:16]
        session(batch)
        best = min(_timed(session, batch) for _ in range(args.reps))
        return 16 / best

    reference = OnnxSession(fp32_bytes, args.threads)
    ref = outputs(reference)

    def quantized(scheme: int8.WeightScheme) -> bytes:
        rec = int8.recipe(sha, 150, calib, scheme)
        return int8.quantize(fp32_bytes, ranges, x[:1], rec)

    def report(name: str, model: bytes) -> None:
        session = OnnxSession(model, args.threads)
        got = outputs(session)
        c5 = cosines(got["block5_pool"], ref["block5_pool"])
        cp = min(float(cosines(pooled(got[k]), pooled(ref[k])).min()) for k in ref)
        before, ours, after = speed(reference), speed(session), speed(reference)
        print(f"| {name} | {c5.min():.4f} / {c5.mean():.4f} | {cp:.4f} | {ours:.1f} | "
              f"{2 * ours / (before + after):.2f}x |", flush=True)

    print("| weights | block5 maps worst / mean cosine | pooled worst | img/s | vs fp32 |")
    print("|---|---|---|---|---|")
    layers = int8.CONV_LAYERS
    parts = args.parts.split(",")
    if "schemes" in parts:
        for fmt in ("s8", "u8", "s7"):
            report(f"all {fmt}", quantized(int8.WeightScheme(fmt, fmt)))
        report("u8, block1_conv1 fp32",
               quantized(int8.WeightScheme("x", "u8", (("block1_conv1", "fp32"),))))
        report("portable (the product's)", quantized(int8.PORTABLE))
    if "screen" in parts or "combos" in parts:
        base_scheme = int8.WeightScheme("x", "u8", (("block1_conv1", "fp32"),))
        base = quantized(base_scheme)
        seven = quantized(int8.WeightScheme("x", "s7", (("block1_conv1", "fp32"),)))
        if "screen" in parts:
            for layer in layers[1:]:
                report(f"u8, block1_conv1 fp32, {layer} s7", _splice(base, seven, [layer]))
        for combo in args.s7 if "combos" in parts else []:
            chosen = combo.split(",")
            report(f"u8, block1_conv1 fp32, s7: {combo}", _splice(base, seven, chosen))


def _timed(session: object, batch: np.ndarray) -> float:
    t = time.perf_counter()
    session(batch)  # type: ignore[operator]
    return time.perf_counter() - t


def _splice(base: bytes, other: bytes, layers: list[str]) -> bytes:
    """`base` with the quantized weights (and their scales) of `layers` taken from `other`."""
    import onnx

    a, b = onnx.load_from_string(base), onnx.load_from_string(other)
    theirs = {init.name: init for init in b.graph.initializer}
    for init in a.graph.initializer:
        if any(init.name.startswith(f"{layer}_W") for layer in layers):
            init.CopyFrom(theirs[init.name])
    data: bytes = a.SerializeToString()
    return data


if __name__ == "__main__":
    sys.exit(main())
