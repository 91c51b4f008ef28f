"""Target 1: `extract` images/s on real images versus the Keras recipe and the sgemm ceiling.

Each round runs, one after another on the same folder: numpy sgemm (the ceiling), the peer
(`keras_recipe.py --extract-only`), `extract` with the default runtime (auto), `extract` with the
other runtime (`--compare`), then sgemm again. Throughputs are loop figures (decode, forward pass
and, for `extract`, cache writes; model loading excluded), as each tool reports them.
Ratios are per round; the verdict uses their median.

    .venv/bin/python benchmarks/extract_speed.py [--dir ../shared/data/elpv/train] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from _common import (
    ELPV,
    GFLOP_PER_IMAGE,
    PEER,
    WEIGHTS,
    machine,
    run_extract,
    run_json,
    sgemm_gflops,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TARGET_VS_PEER = 1.3
TARGET_VS_CEILING = 0.85


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", type=Path, default=ELPV / "train")
    ap.add_argument("--weights", type=Path, default=WEIGHTS)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--compare", default="onnxruntime", choices=["onnxruntime", "keras", "none"],
                    help="also time `extract --runtime COMPARE` (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run")
    args = ap.parse_args()

    from extractor.backbone import resolve_runtime

    print(f"machine: {machine()}", flush=True)
    print(f"default runtime (auto) here: {resolve_runtime()}", flush=True)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="featcache-bench-") as tmp:
        for r in range(args.rounds):
            row: dict[str, float] = {"sgemm_before": sgemm_gflops()}
            peer = run_json([sys.executable, str(PEER), "--weights", str(args.weights),
                             "--train", str(args.dir), "--extract-only"], args.timeout)
            row["peer"] = peer["extract_img_per_s_train"]
            common = ["--dir", str(args.dir), "--weights", str(args.weights)]
            ours = run_extract([*common, "--out", f"{tmp}/auto{r}.h5"], args.timeout)
            row["extract"] = ours["img_per_s"]
            row["images"] = ours["images"]
            if args.compare != "none":
                other = run_extract([*common, "--out", f"{tmp}/other{r}.h5", "--runtime",
                                     args.compare], args.timeout)
                row["extract_other"] = other["img_per_s"]
            row["sgemm_after"] = sgemm_gflops()
            sgemm = (row["sgemm_before"] + row["sgemm_after"]) / 2
            row["ceiling"] = sgemm / GFLOP_PER_IMAGE
            row["vs_peer"] = row["extract"] / row["peer"]
            row["vs_ceiling"] = row["extract"] / row["ceiling"]
            if "extract_other" in row:
                row["other_vs_peer"] = row["extract_other"] / row["peer"]
            rounds.append(row)
            print(json.dumps({"round": r + 1, **{k: round(v, 3) for k, v in row.items()}}),
                  flush=True)

    vs_peer = statistics.median(r["vs_peer"] for r in rounds)
    vs_ceiling = statistics.median(r["vs_ceiling"] for r in rounds)
    print(f"extract (default runtime) / peer:    {vs_peer:.2f}x  (target >= {TARGET_VS_PEER})")
    print(f"extract (default runtime) / ceiling: {vs_ceiling:.0%}  (target >= "
          f"{TARGET_VS_CEILING:.0%}; ceiling = sgemm GFLOP/s / {GFLOP_PER_IMAGE} GFLOP per image)")
    if args.compare != "none":
        kp = statistics.median(r["other_vs_peer"] for r in rounds)
        print(f"extract --runtime {args.compare} / peer: {kp:.2f}x")
    ok = vs_peer >= TARGET_VS_PEER and vs_ceiling >= TARGET_VS_CEILING
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
