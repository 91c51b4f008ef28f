"""Target 2: peak memory of `extract` on 5,000 images within 10% of that on 500.

Builds two folders under a temporary directory from the real ELPV images, each file given
distinct bytes (a few bytes appended after the PNG's end, which decoders ignore) so the
SHA-256 dedupe does not skip copies, then runs `extract` on each in a fresh process and reads
that process's peak RSS from the kernel (wait4 rusage). The temporary folders are removed.

    .venv/bin/python benchmarks/extract_memory.py [--small 500] [--large 5000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import BIN, ELPV, WEIGHTS, machine, peak_rss_mib

TARGET = 1.10


def make_folder(root: Path, n: int) -> Path:
    sources = sorted(ELPV.glob("*/*/*.png"))
    for cls in ("defective", "functional"):
        (root / cls).mkdir(parents=True)
    for i in range(n):
        src = sources[i % len(sources)]
        data = src.read_bytes() + b"featcache-bench-%d" % i
        (root / src.parent.name / f"{i:05d}-{src.name}").write_bytes(data)
    return root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--large", type=int, default=5000)
    ap.add_argument("--weights", type=Path, default=WEIGHTS)
    ap.add_argument("--runtime", default="auto")
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args()

    print(f"machine: {machine()}", flush=True)
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="featcache-mem-") as tmp:
        for n in (args.small, args.large):
            folder = make_folder(Path(tmp) / f"imgs{n}", n)
            cmd = [str(BIN / "extract"), "--dir", str(folder), "--out", f"{tmp}/c{n}.h5",
                   "--weights", str(args.weights), "--runtime", args.runtime]
            rss, wall, out = peak_rss_mib(cmd, args.timeout)
            peaks[n] = rss
            line = next((x.strip() for x in out.splitlines() if x.startswith("extracted:")), "")
            print(json.dumps({"images": n, "peak_rss_mib": round(rss, 1), "wall_s": round(wall, 1),
                              "summary": line}), flush=True)
    ratio = peaks[args.large] / peaks[args.small]
    print(f"peak RSS {args.large} images / {args.small} images: {ratio:.3f}  "
          f"(target <= {TARGET:.2f})")
    print("PASS" if ratio <= TARGET else "FAIL")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
