"""Peak memory of decoding one large image with `extractor.images.decode_image`.

Writes a smooth (so small: a 9,400x9,400 16-bit PNG is ~190 KB) image of the given size and
mode under a temporary directory, then decodes it in a fresh process and reports how far that
process's peak RSS rose above its RSS just before the decode, in MiB and bytes per pixel.
Memory is not a timing: it is meaningful on a loaded machine too.

    .venv/bin/python benchmarks/decode_memory.py [--size 9400] [--mode I;16] [--max-pixels N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Runs in the child: reset the kernel's peak-RSS mark to the RSS now, decode, read the mark.
#: Not getrusage's ru_maxrss: Python starts children with vfork, and Linux carries the parent's
#: peak RSS into the child's ru_maxrss at exec, so a parent that once held a large image would
#: show its own peak. VmHWM belongs to the child's own address space; writing 5 to clear_refs
#: resets it (Linux 4.0+).
_CHILD = """
import sys
from extractor.images import decode_image

def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field + " not in /proc/self/status")

data = open(sys.argv[1], "rb").read()
max_pixels = int(sys.argv[2])
kw = {"max_pixels": max_pixels} if max_pixels else {}
decode_image(data, 150, **kw)  # once, so lazy imports and one-time allocations are not counted
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status_kb("VmRSS")
decode_image(data, 150, **kw)
print((status_kb("VmHWM") - before) * 1024)
"""


def write_image(path: Path, size: int, mode: str) -> int:
    """A smooth `mode` image of size x size pixels as PNG (TIFF for I and F); its byte count."""
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 1, size, dtype=np.float32)
    if mode == "I;16":
        row = (ramp * 65535).astype(np.uint16)
        im = Image.fromarray(np.broadcast_to(row, (size, size)).copy())
    elif mode in ("I", "F"):
        row = (ramp * 65535).astype(np.int32 if mode == "I" else np.float32)
        im = Image.fromarray(np.broadcast_to(row, (size, size)).copy())
    else:
        row = (ramp * 255).astype(np.uint8)
        gray = Image.fromarray(np.broadcast_to(row, (size, size)).copy())
        if mode == "P+transparency":
            im = gray.convert("RGB").quantize(64)
            im.info["transparency"] = 0
        else:
            im = gray.convert(mode)
    fmt = "TIFF" if mode in ("I", "F") else "PNG"
    kw = {"transparency": 0} if mode == "P+transparency" else {}
    im.save(path, format=fmt, **kw)
    return path.stat().st_size


def decode_growth(path: Path, max_pixels: int = 0, timeout: float = 600) -> int:
    """Bytes the peak RSS of a fresh process rose by while decoding `path`."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(max_pixels)],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(f"decode failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return int(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=9400, help="side in pixels (default: 9400)")
    ap.add_argument("--mode", default="I;16",
                    help="I;16 (default), L, RGB, RGBA, P, P+transparency, I or F")
    ap.add_argument("--max-pixels", type=int, default=0,
                    help="pass this pixel limit to decode_image (0: its default)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="featcache-decode-") as tmp:
        path = Path(tmp) / "big.img"
        nbytes = write_image(path, args.size, args.mode)
        growth = decode_growth(path, args.max_pixels)
    pixels = args.size * args.size
    result = {"mode": args.mode, "size": args.size, "file_bytes": nbytes,
              "peak_growth_mib": round(growth / 2**20, 1),
              "bytes_per_pixel": round(growth / pixels, 2)}
    print(f"{args.mode} {args.size}x{args.size} ({nbytes / 1024:.0f} KB file): peak RSS rose "
          f"{result['peak_growth_mib']} MiB while decoding, {result['bytes_per_pixel']} B/pixel")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
