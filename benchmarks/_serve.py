"""Helpers for the serving benchmarks: a head to serve, a `serve` process, distinct images.

Everything stays on 127.0.0.1 and under a temporary directory; the server is stopped on exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from _common import BIN, ELPV, WEIGHTS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_head(tmp: Path, per_class: int = 20) -> Path:
    """A logistic-regression head trained on a small cache of real ELPV images."""
    folder = tmp / "head-images"
    for cls in ("defective", "functional"):
        (folder / cls).mkdir(parents=True)
        for src in sorted((ELPV / "train" / cls).glob("*.png"))[:per_class]:
            (folder / cls / src.name).symlink_to(src)
    cache = tmp / "head-cache.h5"
    head = tmp / "head"
    for cmd in (
        [str(BIN / "extract"), "--dir", str(folder), "--out", str(cache), "--weights",
         str(WEIGHTS), "-q"],
        [str(BIN / "train-head"), "--cache", str(cache), "--out", str(head), "--head", "logreg",
         "--val-split", "0.25", "-q"],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return head


@contextlib.contextmanager
def serving(head: Path, *extra: str, timeout: float = 300) -> Iterator[str]:
    """Run `serve` on a free local port until ready; yield its base URL; stop it after."""
    import httpx

    port = free_port()
    log = open(head.parent / f"serve-{port}.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(BIN / "serve"), "--head", str(head), "--host", "127.0.0.1", "--port", str(port),
         "--weights", str(WEIGHTS), "--log-level", "warning", *extra],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited ({proc.returncode}):\n"
                                   f"{(head.parent / f'serve-{port}.log').read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"serve not ready after {timeout}s")
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class DistinctImages:
    """Real ELPV PNGs, each call with different bytes (so the service's feature cache misses)."""

    def __init__(self) -> None:
        self.sources = [p.read_bytes() for p in sorted(ELPV.glob("validation/*/*.png"))]
        self.count = 0

    def next(self) -> bytes:
        # Bytes after a PNG's IEND chunk are ignored by decoders but change the SHA-256.
        data = self.sources[self.count % len(self.sources)] + b"bench-%d" % self.count
        self.count += 1
        return data
