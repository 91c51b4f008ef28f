"""The real `serve` command: a subprocess on a free local port, spoken to over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from liveserver import free_port

from service.cli import main as serve_main


def test_no_head_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_main([]) == 2
    assert "--head" in capsys.readouterr().err
    assert serve_main(["--head", "h", "--max-batch-size", "0"]) == 2
    assert "max_batch_size" in capsys.readouterr().err


def test_bad_head_exits_1(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert serve_main(["--head", str(tmp_path / "missing"), "--port", str(free_port())]) == 1
    assert "missing" in caplog.text


def test_missing_heads_dir_exits_1(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert serve_main(["--heads-dir", str(tmp_path / "nowhere"), "--port", str(free_port())]) == 1
    assert "nowhere" in caplog.text and "not a folder" in caplog.text


@pytest.mark.slow
def test_serve_subprocess(head_dir: Path, elpv_images: list[Path], tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FEATCACHE_MAX_UPLOAD_BYTES": "1000000", "FEATCACHE_API_KEY": "k-123"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "--head", str(head_dir), "--port", str(port),
             "--max-batch-size", "4"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if client.get("/ready").status_code == 200:
                        break
                    assert client.get("/health").status_code == 200
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "not ready in 120 s:\n" + log.read_text()
                time.sleep(0.2)

            data = elpv_images[0].read_bytes()
            assert client.post("/predict", files={"file": ("a.png", data)}).status_code == 401
            auth = {"X-API-Key": "k-123"}
            r = client.post("/predict", files={"file": ("a.png", data)}, headers=auth)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["head"] == head_dir.name and body["cached"] is False
            assert body["label"] in ("defective", "functional")
            again = client.post("/predict", files={"file": ("a.png", data)}, headers=auth).json()
            assert again["cached"] is True
            assert "featcache_feature_cache_hits_total 1.0" in client.get(
                "/metrics", headers=auth).text

        # A huge declared body is refused from its headers, before the body is sent.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nX-API-Key: k-123\r\n"
                      b"Content-Type: multipart/form-data; boundary=b\r\n"
                      b"Content-Length: 1000000000\r\n\r\n--b\r\n")
            reply = ""
            while "upload_too_large" not in reply and (chunk := s.recv(4096)):
                reply += chunk.decode("latin-1")
        assert reply.startswith("HTTP/1.1 413"), reply
        assert '"upload_too_large"' in reply
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()
    assert "ready" in log.read_text()
