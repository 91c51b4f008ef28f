"""soak.py --v2: good /v2 infer requests, first alone, then beside abusive ones.

Phase 1 (unloaded): `good_clients` threads send one-image binary requests, each image new (the
feature cache misses), for `unloaded_s`. Phase 2 (loaded): the same good clients, and
`abuse_clients` threads sending what issue 20 found harmful, for `loaded_s`:

  repeat-outputs   the same output asked 1,000 times                         400
  many-elements    32 MiB of empty elements under shape [1]                  400
  deep-json        JSON nested 100,000 deep                                  400
  bad-header       Inference-Header-Content-Length "+NNN"                    400
  huge-version     a 5,000-digit version in the URL                          404
  big-element      an element claiming more than max_upload_bytes            413
  oversize         a Content-Length over max_batch_request_bytes             413
  gzip-bomb        100 kB of gzip that inflates past max_batch_request_bytes 413
  slow-sender      headers, then a byte a second: never the whole body       408

Prints the good requests' p50/p99 in each phase (and their ratio), every outcome by kind and
status, the number of 500s, and the server's peak RSS after each phase.
"""

from __future__ import annotations

import collections
import gzip
import json
import random
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from _serve import DistinctImages

HEADER_LENGTH = "Inference-Header-Content-Length"

ABUSE = {"repeat-outputs": 3, "many-elements": 1, "deep-json": 2, "bad-header": 2,
         "huge-version": 2, "big-element": 2, "oversize": 2, "gzip-bomb": 1, "slow-sender": 1}


def binary_request(images: list[bytes], header_extra: dict[str, Any] | None = None,
                   data: bytes | None = None) -> tuple[bytes, dict[str, str]]:
    """A binary-tensor /v2 request as tritonclient sends it: JSON header, then the elements."""
    if data is None:
        data = b"".join(len(i).to_bytes(4, "little") + i for i in images)
    header = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [len(images)],
                          "parameters": {"binary_data_size": len(data)}}],
              **(header_extra or {})}
    raw = json.dumps(header).encode()
    return raw + data, {HEADER_LENGTH: str(len(raw)),
                        "Content-Type": "application/octet-stream"}


class Abuse:
    """Every abusive request, made once."""

    def __init__(self, image: bytes, max_upload_bytes: int, max_request_bytes: int) -> None:
        self.image = image
        self.max_request_bytes = max_request_bytes
        self.repeat = binary_request([image], {"outputs": [{"name": "LABEL"}] * 1000})
        n = 8 << 20
        self.many = binary_request([b""], data=bytes(4 * n))  # shape [1], 8 Mi elements
        self.deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        body, headers = binary_request([image])
        self.good_body, self.good_headers = body, headers
        self.bad_header = body, {HEADER_LENGTH: "+" + headers[HEADER_LENGTH]}
        self.big_element = binary_request(
            [b""], data=(max_upload_bytes + 1).to_bytes(4, "little") + image)
        self.bomb = gzip.compress(b"\0" * (max_request_bytes + (8 << 20)), 9)


class Outcomes:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.good: dict[str, list[float]] = {"unloaded": [], "loaded": []}

    def add(self, phase: str, kind: str, status: str, seconds: float) -> None:
        with self.lock:
            self.counts[(phase, kind, status)] += 1
            if kind == "good" and status == "200":
                self.good[phase].append(seconds)


def _raw_exchange(url: str, head: bytes, first: bytes, trickle_s: float | None,
                  limit_s: float) -> str:
    """Send `head` and `first` over a plain socket; with `trickle_s`, then one byte every
    `trickle_s` until the server answers. The status the server sent, or what happened."""
    parts = urlsplit(url)
    deadline = time.monotonic() + limit_s
    with socket.create_connection((parts.hostname, parts.port), timeout=limit_s) as s:
        s.sendall(head + first)
        s.settimeout(trickle_s or limit_s)
        while time.monotonic() < deadline:
            try:
                data = s.recv(4096)
            except TimeoutError:
                try:
                    s.sendall(b" ")
                except OSError:
                    return "closed"
                continue
            except OSError:
                return "reset"
            return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"
    return "no answer"


def _send(c: Any, url: str, model: str, kind: str, abuse: Abuse, good: bytes | None,
          stop_at: float) -> str:
    infer = f"/v2/models/{model}/infer"
    if kind == "good":
        assert good is not None
        body, headers = binary_request([good])
        return str(c.post(infer, content=body, headers=headers).status_code)
    if kind == "repeat-outputs":
        return str(c.post(infer, content=abuse.repeat[0], headers=abuse.repeat[1]).status_code)
    if kind == "many-elements":
        return str(c.post(infer, content=abuse.many[0], headers=abuse.many[1]).status_code)
    if kind == "deep-json":
        return str(c.post(infer, content=abuse.deep,
                          headers={"Content-Type": "application/json"}).status_code)
    if kind == "bad-header":
        return str(c.post(infer, content=abuse.bad_header[0],
                          headers=abuse.bad_header[1]).status_code)
    if kind == "huge-version":
        return str(c.post(f"/v2/models/{model}/versions/{'9' * 5000}/infer",
                          content=abuse.good_body, headers=abuse.good_headers).status_code)
    if kind == "big-element":
        return str(c.post(infer, content=abuse.big_element[0],
                          headers=abuse.big_element[1]).status_code)
    if kind == "gzip-bomb":
        return str(c.post(infer, content=abuse.bomb,
                          headers={"Content-Encoding": "gzip",
                                   "Content-Type": "application/json"}).status_code)
    host = urlsplit(url).netloc
    extra = "".join(f"{k}: {v}\r\n" for k, v in c.headers.items()
                    if k.lower() in ("x-api-key", "authorization"))
    if kind == "oversize":
        head = (f"POST {infer} HTTP/1.1\r\nHost: {host}\r\n{extra}"
                f"Content-Length: {abuse.max_request_bytes + 1}\r\n\r\n").encode()
        return _raw_exchange(url, head, abuse.good_body, None, 30)
    if kind == "slow-sender":
        head = (f"POST {infer} HTTP/1.1\r\nHost: {host}\r\n{extra}"
                f"Content-Length: {len(abuse.good_body) + 10_000}\r\n\r\n").encode()
        # Until the server cuts it off, or the phase ends (a server without a body timeout).
        return _raw_exchange(url, head, abuse.good_body[:100], 1.0,
                             max(1.0, stop_at - time.monotonic() + 2))
    raise ValueError(kind)


def run_phase(url: str, model: str, phase: str, outcomes: Outcomes, *, good_clients: int,
              abuse_clients: int, seconds: float, abuse: Abuse, images: DistinctImages,
              headers: dict[str, str], seed: int) -> None:
    import httpx

    stop_at = time.monotonic() + seconds
    lock = threading.Lock()
    kinds, weights = zip(*ABUSE.items(), strict=True)

    def client(i: int, good: bool) -> None:
        rng = random.Random(seed + i)
        with httpx.Client(base_url=url, timeout=120, headers=headers) as c:
            while time.monotonic() < stop_at:
                kind = "good" if good else rng.choices(kinds, weights)[0]
                image = None
                if good:
                    with lock:
                        image = images.next()
                t = time.perf_counter()
                try:
                    status = _send(c, url, model, kind, abuse, image, stop_at)
                except httpx.TransportError as exc:
                    status = type(exc).__name__
                outcomes.add(phase, kind, status, time.perf_counter() - t)
                if status == "503":
                    time.sleep(0.5)

    threads = [threading.Thread(target=client, args=(i, True), daemon=True)
               for i in range(good_clients)]
    threads += [threading.Thread(target=client, args=(100 + i, False), daemon=True)
                for i in range(abuse_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _latency(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(float(np.percentile(values, 50)), 3),
            "p99": round(float(np.percentile(values, 99)), 3), "max": round(max(values), 3)}


def soak_v2(server: Any, model: str, args: Any, headers: dict[str, str],
            peak_mib: Any) -> dict[str, Any]:
    """Both phases against `server` (soak.py's LocalServer or ExternalServer); `peak_mib()`
    reads the server's peak RSS so far."""
    images = DistinctImages()
    abuse = Abuse(images.sources[0], args.max_upload_bytes, args.max_batch_request_bytes)
    outcomes = Outcomes()
    common = {"abuse": abuse, "images": images, "headers": headers, "seed": args.seed}
    t0 = time.monotonic()
    run_phase(server.url, model, "unloaded", outcomes, good_clients=args.good_clients,
              abuse_clients=0, seconds=args.unloaded_seconds, **common)
    peak_unloaded = peak_mib()
    run_phase(server.url, model, "loaded", outcomes, good_clients=args.good_clients,
              abuse_clients=args.abuse_clients, seconds=args.seconds, **common)
    peak = peak_mib()
    unloaded, loaded = _latency(outcomes.good["unloaded"]), _latency(outcomes.good["loaded"])
    return {
        "seconds": round(time.monotonic() - t0, 1),
        "good_clients": args.good_clients, "abuse_clients": args.abuse_clients,
        "outcomes": [{"phase": p, "kind": k, "status": s, "count": n}
                     for (p, k, s), n in sorted(outcomes.counts.items())],
        "good_latency_s": {"unloaded": unloaded, "loaded": loaded},
        "p99_ratio": (round(loaded["p99"] / unloaded["p99"], 2)
                      if loaded.get("p99") and unloaded.get("p99") else None),
        "status_500": sum(n for (_, _, s), n in outcomes.counts.items() if s == "500"),
        "peak_rss_mib": {"after_unloaded": peak_unloaded, "after_loaded": peak},
    }


def report_v2(result: dict[str, Any]) -> None:
    print(f"\nV2 soak: {result['good_clients']} good clients, then beside "
          f"{result['abuse_clients']} abusive ones; {result['seconds']} s in all")
    print("\noutcomes (phase, kind, status, count):")
    for o in result["outcomes"]:
        print(f"  {o['phase']:<9} {o['kind']:<15} {o['status']:>14}  {o['count']}")
    print("\ngood requests' latency (s):")
    for phase, lat in result["good_latency_s"].items():
        print(f"  {phase:<9} " + "  ".join(f"{k} {v}" for k, v in lat.items()))
    print(f"  p99 loaded / unloaded: {result['p99_ratio']}")
    print(f"\n500s: {result['status_500']}")
    rss = result["peak_rss_mib"]
    print(f"peak RSS of the server: {rss['after_unloaded']} MiB after the unloaded phase, "
          f"{rss['after_loaded']} MiB after the loaded one")
    print(json.dumps(result))
