"""Peak RSS of a real `serve` for large /v2 request bodies: one at a time, then several at once.

Sends a binary /v2 request of `--elements` elements of `--element-mib` MiB each (not images:
the request is refused at decoding, after the body has been received and parsed, which is
where a large body costs memory), first alone, then `--concurrent` copies at once, and prints
the server's peak RSS (VmHWM) after each, above its peak once ready. Memory is not a timing:
it is meaningful on a loaded machine too. 127.0.0.1 only.

    .venv/bin/python benchmarks/v2_body_memory.py [--head DIR] [--elements 30] [--element-mib 2]
        [--concurrent 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path

from _common import machine
from _serve import make_head, serving


def _peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not in /proc/PID/status")


def _server_pid(port: int) -> int:
    """The process listening on 127.0.0.1:PORT, from /proc (the `serve` this script started)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # LISTEN
            inode = fields[9]
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if fd.readlink().name == f"socket:[{inode}]":
                return int(fd.parts[2])
        except OSError:
            continue
    raise RuntimeError(f"no process listens on port {port}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--head", type=Path, help="head to serve (default: train a small one)")
    ap.add_argument("--elements", type=int, default=30)
    ap.add_argument("--element-mib", type=float, default=2.0)
    ap.add_argument("--concurrent", type=int, default=8)
    args = ap.parse_args()
    if not 1 <= args.concurrent <= 64 or not 1 <= args.elements <= 32:
        ap.error("--concurrent must be 1..64 and --elements 1..32 (the server's batch limit)")
    import httpx

    print(f"machine: {machine()}", flush=True)
    element = b"x" * int(args.element_mib * 2**20)
    data = b"".join(len(element).to_bytes(4, "little") + element for _ in range(args.elements))
    header = json.dumps({"inputs": [{"name": "IMAGE", "datatype": "BYTES",
                                     "shape": [args.elements],
                                     "parameters": {"binary_data_size": len(data)}}]}).encode()
    body, headers = header + data, {"Inference-Header-Content-Length": str(len(header))}
    with tempfile.TemporaryDirectory(prefix="featcache-v2mem-") as tmp:
        head = args.head or make_head(Path(tmp))
        with serving(head) as url:
            pid = _server_pid(int(url.rsplit(":", 1)[1]))
            model = httpx.get(f"{url}/ready", timeout=10).json()["heads"][0]
            infer = f"{url}/v2/models/{model}/infer"
            ready = _peak_mib(pid)
            one = httpx.post(infer, content=body, headers=headers, timeout=300).status_code
            after_one = _peak_mib(pid)
            statuses: list[int] = []

            def send() -> None:
                r = httpx.post(infer, content=body, headers=headers, timeout=300)
                statuses.append(r.status_code)

            threads = [threading.Thread(target=send) for _ in range(args.concurrent)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            after_all = _peak_mib(pid)
    result = {"body_mib": round(len(body) / 2**20, 1), "ready_mib": round(ready),
              "one": {"status": one, "growth_mib": round(after_one - ready)},
              "concurrent": {"n": args.concurrent, "statuses": sorted(statuses),
                             "growth_mib": round(after_all - ready)}}
    print(f"body {result['body_mib']} MiB; peak RSS once ready {result['ready_mib']} MiB")
    print(f"one request ({one}): +{result['one']['growth_mib']} MiB")
    print(f"{args.concurrent} at once ({sorted(statuses)}): "
          f"+{result['concurrent']['growth_mib']} MiB")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
