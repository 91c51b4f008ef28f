"""Soak: many clients send good, bad and huge uploads to a real `serve`; partway through, the
server is killed with SIGKILL and comes back. Prints errors by kind (status code / error code),
the server's peak RSS, and the recovery time (kill -> /ready 200 again).

Everything stays on 127.0.0.1 (a --url elsewhere is refused) and is bounded: --seconds of load
(at most an hour), --max-requests in all, --clients threads.

With --v2, the load is the Open Inference Protocol's infer route instead, and there is no
kill: good requests alone, then beside abusive ones (repeated outputs, oversized and malformed
bodies, slow senders; benchmarks/_soak_v2.py lists them). It prints the good requests' p99 in
both phases, the number of 500s and the server's peak RSS.

Modes:
  local (default)  starts `serve --head DIR` on a free port (trains a small head first when
                   --head is not given); after the kill, plays the supervisor: starts it again
                   on the same port, as a process manager would.
  --url URL        a server already running; killed only if --pid names its process (something
                   else must restart it), and its RSS read only then.
  --compose        the `api` service of compose.yaml (or --compose-file), already up: its
                   container's process is killed with SIGKILL from the host, and Docker's restart
                   policy brings it back. (`docker kill` would not do: Docker counts it as a
                   manual stop, which restart policies ignore.) Needs docker and the right to
                   signal the container's process (root, usually).

    .venv/bin/python benchmarks/soak.py [--head DIR] [--clients 16] [--seconds 60]
    .venv/bin/python benchmarks/soak.py --compose [--url http://127.0.0.1:8000]
    .venv/bin/python benchmarks/soak.py --v2 [--good-clients 2] [--abuse-clients 4]
        [--unloaded-seconds 30] [--seconds 60]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from _common import BIN, ELPV, REPO, WEIGHTS, machine
from _serve import DistinctImages, free_port, make_head

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_SECONDS = 3600.0

#: What the clients send, and how often (weights). "huge-ok" is a 16-bit PNG just under the
#: default serving pixel limit (decoded: the memory stressor); "huge-refused" one over it.
MIX = {
    "good": 45, "repeat": 15, "bad": 15, "huge-ok": 4, "huge-refused": 6, "bomb": 3,
    "oversize": 2, "batch": 10,
}


# --- what to send ---------------------------------------------------------------------------

def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _wide_png(side: int) -> bytes:
    """A smooth 16-bit grayscale PNG, side x side: tiny file, many pixels."""
    row = np.linspace(0, 65535, side).astype(np.uint16)
    return _png(np.broadcast_to(row, (side, side)).copy())


def _bomb() -> bytes:
    """A PNG header claiming 50,000 x 50,000 pixels (a decompression bomb's signature)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


class Uploads:
    """Every kind of upload, made once; `good` ones get distinct bytes per call."""

    def __init__(self, max_image_pixels: int, max_upload_bytes: int) -> None:
        self.distinct = DistinctImages()
        self._lock = threading.Lock()
        real = self.distinct.sources[0]
        self.repeat = real
        self.bad = [b"", b"these are my notes\n", real[: len(real) // 3],
                    _png(np.zeros((2, 2, 3), np.uint8))]
        side = int(max_image_pixels ** 0.5)
        self.huge_ok = _wide_png(side - 8)
        self.huge_refused = _wide_png(side + 256)
        self.bomb = _bomb()
        self.oversize = real + b"\0" * (max_upload_bytes + 1)

    def good(self) -> bytes:
        with self._lock:
            return self.distinct.next()

    def one(self, kind: str, rng: random.Random) -> bytes:
        if kind == "good":
            return self.good()
        if kind == "bad":
            return rng.choice(self.bad)
        return {"repeat": self.repeat, "huge-ok": self.huge_ok, "huge-refused": self.huge_refused,
                "bomb": self.bomb, "oversize": self.oversize}[kind]


# --- the load --------------------------------------------------------------------------------

class Tally:
    """Outcomes by (kind, status, code) and latencies of answered requests, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcomes: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.files: collections.Counter[str] = collections.Counter()
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.requests = 0

    def add(self, kind: str, status: str, code: str, seconds: float | None) -> None:
        with self.lock:
            self.outcomes[(kind, status, code)] += 1
            if seconds is not None and status == "200":
                self.latency[kind].append(seconds)


def _code(response: Any) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "-"


def run_clients(url: str, uploads: Uploads, tally: Tally, *, clients: int, stop_at: float,
                max_requests: int, headers: dict[str, str], seed: int) -> None:
    import httpx

    kinds, weights = zip(*MIX.items(), strict=True)
    budget = threading.Semaphore(max_requests)

    def client(i: int) -> None:
        rng = random.Random(seed + i)
        with httpx.Client(base_url=url, timeout=60, headers=headers) as c:
            while time.monotonic() < stop_at and budget.acquire(blocking=False):
                kind = rng.choices(kinds, weights)[0]
                t = time.perf_counter()
                try:
                    if kind == "batch":
                        files = [("files", (f"{j}.png", uploads.one(
                            rng.choice(("good", "good", "repeat", "bad")), rng)))
                            for j in range(8)]
                        r = c.post("/predict/batch", files=files)
                        if r.status_code == 200:
                            with tally.lock:
                                for item in r.json()["results"]:
                                    error = item.get("error")
                                    tally.files[error["code"] if error else "ok"] += 1
                    else:
                        r = c.post("/predict", files={"file": ("x.png", uploads.one(kind, rng))})
                    tally.add(kind, str(r.status_code), _code(r) if r.status_code != 200 else "-",
                              time.perf_counter() - t)
                    if r.status_code == 503:
                        time.sleep(min(float(r.headers.get("retry-after", 1)), 2.0))
                except httpx.TransportError as exc:
                    # The server is down (killed, restarting): connection refused, reset, ...
                    tally.add(kind, "no answer", type(exc).__name__, None)
                    time.sleep(0.2)
                with tally.lock:
                    tally.requests += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# --- the server: started here, or found ------------------------------------------------------

def _status_kb(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/PID/status (VmHWM: peak RSS), or None when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def wait_ready(url: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> float:
    """Seconds until GET /ready answers 200 (polled every 50 ms)."""
    import httpx

    t0 = time.monotonic()
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return time.monotonic() - t0
        if not alive():
            raise RuntimeError("the server exited before it was ready")
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{url}/ready not 200 after {timeout:.0f} s")
        time.sleep(0.05)


class LocalServer:
    """`serve` as a child process on 127.0.0.1; `kill` is SIGKILL, `restart` the supervisor."""

    def __init__(self, head: Path, port: int, extra: list[str], log: Path) -> None:
        self.cmd = [str(BIN / "serve"), "--head", str(head), "--host", "127.0.0.1",
                    "--port", str(port), "--log-level", "warning", *extra]
        if WEIGHTS.exists() and "--weights" not in extra:
            self.cmd += ["--weights", str(WEIGHTS)]
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pid(self) -> int | None:
        return self.proc.pid if self.alive() and self.proc is not None else None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def restart(self) -> None:
        self.start()

    def stop(self) -> None:
        if self.alive() and self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ExternalServer:
    """A server someone else runs (--url), optionally with its --pid to kill and measure."""

    def __init__(self, url: str, pid: int | None) -> None:
        self.url = url
        self._pid = pid

    def alive(self) -> bool:
        return True

    def pid(self) -> int | None:
        return self._pid

    def kill(self) -> None:
        assert self._pid is not None
        os.kill(self._pid, signal.SIGKILL)
        self._pid = None  # a new process will come back, with a PID we do not know

    def restart(self) -> None:
        """Nothing: whatever supervises the server restarts it."""

    def stop(self) -> None:
        """Nothing: not ours."""


class ComposeServer:
    """The compose service's container: killed from the host, restarted by Docker."""

    def __init__(self, url: str, compose_file: Path, service: str) -> None:
        self.url = url
        self.compose = ["docker", "compose", "-f", str(compose_file)]
        self.service = service

    def _container(self) -> str:
        out = subprocess.run([*self.compose, "ps", "-q", self.service], capture_output=True,
                             text=True, check=True, timeout=60).stdout.split()
        if not out:
            raise RuntimeError(f"no running container for service {self.service!r}; "
                               f"start it: {' '.join(self.compose)} up -d --wait {self.service}")
        return out[0]

    def alive(self) -> bool:
        return True

    def pid(self) -> int | None:
        with contextlib.suppress(subprocess.SubprocessError, RuntimeError, ValueError):
            out = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", self._container()],
                                 capture_output=True, text=True, check=True, timeout=60)
            pid = int(out.stdout.strip())
            return pid or None
        return None

    def kill(self) -> None:
        pid = self.pid()
        if pid is None:
            raise RuntimeError("cannot find the container's process to kill")
        os.kill(pid, signal.SIGKILL)

    def restart(self) -> None:
        """Nothing: the service's restart policy brings it back."""

    def stop(self) -> None:
        """Nothing: the lead's compose project stays as it was."""


# --- the run ---------------------------------------------------------------------------------

def soak(server: Any, args: argparse.Namespace, headers: dict[str, str]) -> dict[str, Any]:
    uploads = Uploads(args.max_image_pixels, args.max_upload_bytes)
    tally = Tally()
    result: dict[str, Any] = {"kill": None}
    peaks: list[int] = []

    def note_peak() -> None:
        pid = server.pid()
        kb = _status_kb(pid, "VmHWM") if pid else None
        if kb:
            peaks.append(kb)

    def killer() -> None:
        time.sleep(args.kill_at)
        note_peak()
        t_kill = time.monotonic()
        server.kill()
        server.restart()
        try:
            result["kill"] = {"at_s": args.kill_at,
                              "recovery_s": round(wait_ready(server.url, args.recovery_timeout,
                                                             server.alive), 2)}
        except (TimeoutError, RuntimeError) as exc:
            result["kill"] = {"at_s": args.kill_at, "error": str(exc)}
        result["kill"]["since_kill_s"] = round(time.monotonic() - t_kill, 2)

    stop_at = time.monotonic() + args.seconds
    kill_thread = None
    if args.kill_at is not None:
        kill_thread = threading.Thread(target=killer, daemon=True)
        kill_thread.start()
    started = time.monotonic()
    run_clients(server.url, uploads, tally, clients=args.clients, stop_at=stop_at,
                max_requests=args.max_requests, headers=headers, seed=args.seed)
    if kill_thread is not None:
        kill_thread.join(args.recovery_timeout + 60)
    note_peak()
    result["seconds"] = round(time.monotonic() - started, 1)
    result["requests"] = tally.requests
    result["outcomes"] = [
        {"kind": k, "status": s, "code": c, "count": n}
        for (k, s, c), n in sorted(tally.outcomes.items())
    ]
    result["batch_files"] = dict(tally.files)
    result["latency_s"] = {
        kind: {"n": len(v), "p50": round(float(np.percentile(v, 50)), 3),
               "p99": round(float(np.percentile(v, 99)), 3), "max": round(max(v), 3)}
        for kind, v in sorted(tally.latency.items()) if v
    }
    result["peak_rss_mib"] = round(max(peaks) / 1024, 1) if peaks else None
    return result


def report(result: dict[str, Any]) -> None:
    by_code: collections.Counter[tuple[str, str]] = collections.Counter()
    for o in result["outcomes"]:
        by_code[(o["status"], o["code"])] += o["count"]
    print(f"\n{result['requests']} requests in {result['seconds']} s")
    print("\nerrors by kind (status / error code):")
    for (status, code), n in sorted(by_code.items()):
        if status != "200":
            print(f"  {status:>9}  {code:<22} {n}")
    print("\nby upload kind:")
    for o in result["outcomes"]:
        print(f"  {o['kind']:<13} {o['status']:>9}  {o['code']:<22} {o['count']}")
    if result["batch_files"]:
        print(f"\nfiles in batch requests: {result['batch_files']}")
    print("\nlatency of answered requests (s):")
    for kind, lat in result["latency_s"].items():
        print(f"  {kind:<13} n={lat['n']:<6} p50 {lat['p50']:<7} p99 {lat['p99']:<7} "
              f"max {lat['max']}")
    rss = result["peak_rss_mib"]
    print(f"\npeak RSS of the server: {f'{rss} MiB' if rss is not None else 'unknown (no PID)'}")
    kill = result["kill"]
    if kill is None:
        print("kill -9: not done")
    elif "recovery_s" in kill:
        print(f"kill -9 at {kill['at_s']} s: /ready 200 again {kill['recovery_s']} s later")
    else:
        print(f"kill -9 at {kill['at_s']} s: no recovery: {kill['error']}")
    print(json.dumps(result))


def _loopback(url: str) -> str:
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK:
        raise SystemExit(f"soak.py talks to 127.0.0.1 only; got {url}")
    return url.rstrip("/")


@contextlib.contextmanager
def _local_server(args: argparse.Namespace, tmp: Path) -> Iterator[LocalServer]:
    head = args.head or make_head(tmp)
    server = LocalServer(head, free_port(), shlex.split(args.serve_args), tmp / "serve.log")
    server.start()
    try:
        print(f"serve ready in {wait_ready(server.url, 600, server.alive):.1f} s", flush=True)
        yield server
    except BaseException:
        print(f"serve log (tail):\n{server.log.read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        server.stop()


def _v2(server: Any, args: argparse.Namespace, headers: dict[str, str]) -> None:
    import httpx
    from _soak_v2 import report_v2, soak_v2

    model = args.model or httpx.get(f"{server.url}/ready", timeout=10).json()["heads"][0]

    def peak_mib() -> float | None:
        pid = server.pid()
        kb = _status_kb(pid, "VmHWM") if pid else None
        return round(kb / 1024, 1) if kb else None

    report_v2(soak_v2(server, model, args, headers, peak_mib))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--head", type=Path, help="head to serve (local mode; default: train one)")
    ap.add_argument("--url", help="a running server on 127.0.0.1 (default with --compose: "
                    "http://127.0.0.1:8000)")
    ap.add_argument("--pid", type=int, help="with --url: its process, to kill and measure")
    ap.add_argument("--compose", action="store_true", help="the docker compose `api` service")
    ap.add_argument("--compose-file", type=Path, default=REPO / "compose.yaml")
    ap.add_argument("--service", default="api")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-requests", type=int, default=100_000)
    ap.add_argument("--kill-at", type=float, help="seconds into the load (default: half way)")
    ap.add_argument("--no-kill", action="store_true")
    ap.add_argument("--recovery-timeout", type=float, default=300)
    ap.add_argument("--serve-args", default="", help='extra options for `serve` (local mode)')
    ap.add_argument("--api-key", default=os.environ.get("FEATCACHE_API_KEY"),
                    help="sent as X-API-Key (default: $FEATCACHE_API_KEY)")
    ap.add_argument("--max-image-pixels", type=int, default=24_000_000,
                    help="the server's limit, to size the huge uploads around it")
    ap.add_argument("--max-upload-bytes", type=int, default=10 * 2**20,
                    help="the server's limit, to size the oversize uploads over it")
    ap.add_argument("--max-batch-request-bytes", type=int, default=64 * 2**20,
                    help="the server's limit, to size the oversize /v2 requests over it")
    ap.add_argument("--seed", type=int, default=0)
    v2 = ap.add_argument_group("--v2: the Open Inference Protocol, good beside abusive requests")
    v2.add_argument("--v2", action="store_true", help="load /v2 infer (no kill); --seconds is "
                    "the loaded phase")
    v2.add_argument("--good-clients", type=int, default=2)
    v2.add_argument("--abuse-clients", type=int, default=4)
    v2.add_argument("--unloaded-seconds", type=float, default=30,
                    help="good clients alone first, for the unloaded p99")
    v2.add_argument("--body-timeout-s", type=float, default=10,
                    help="local mode: the server's FEATCACHE_BODY_TIMEOUT_S (slow senders are "
                    "cut off after it)")
    v2.add_argument("--model", help="the /v2 model (default: the first head /ready names)")
    args = ap.parse_args()
    if not 0 < args.seconds <= MAX_SECONDS:
        ap.error(f"--seconds must be in (0, {MAX_SECONDS:.0f}]")
    if not 1 <= args.clients <= 256:
        ap.error("--clients must be 1..256")
    if args.v2:
        if args.compose:
            ap.error("--v2 takes a local server or --url, not --compose")
        if not (1 <= args.good_clients <= 64 and 0 <= args.abuse_clients <= 64):
            ap.error("--good-clients must be 1..64 and --abuse-clients 0..64")
        if not 0 < args.unloaded_seconds <= MAX_SECONDS:
            ap.error(f"--unloaded-seconds must be in (0, {MAX_SECONDS:.0f}]")
        args.no_kill = True
    args.kill_at = None if args.no_kill else (
        args.seconds / 2 if args.kill_at is None else args.kill_at)
    if args.kill_at is not None and not 0 <= args.kill_at < args.seconds:
        ap.error("--kill-at must fall within --seconds")
    headers = {"X-API-Key": args.api_key} if args.api_key else {}

    print(f"machine: {machine()}", flush=True)
    if not ELPV.exists():
        ap.error(f"the ELPV images are needed for the good uploads: {ELPV}")
    if args.compose:
        url = _loopback(args.url or "http://127.0.0.1:8000")
        server: Any = ComposeServer(url, args.compose_file, args.service)
        wait_ready(url, args.recovery_timeout)
        report(soak(server, args, headers))
        return 0
    if args.url:
        if args.kill_at is not None and args.pid is None:
            print("--url without --pid: no kill (this script cannot find the server's process)")
            args.kill_at = None
        server = ExternalServer(_loopback(args.url), args.pid)
        wait_ready(server.url, args.recovery_timeout)
        if args.v2:
            _v2(server, args, headers)
        else:
            report(soak(server, args, headers))
        return 0
    if args.v2:  # the server cuts slow senders off soon enough to see it in a short run
        os.environ["FEATCACHE_BODY_TIMEOUT_S"] = str(args.body_timeout_s)
    with tempfile.TemporaryDirectory(prefix="featcache-soak-") as tmp, \
            _local_server(args, Path(tmp)) as local:
        if args.v2:
            _v2(local, args, headers)
        else:
            report(soak(local, args, headers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
