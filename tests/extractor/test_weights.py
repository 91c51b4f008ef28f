"""`--weights imagenet`: the download (standard library only, no Keras: the lean serving image
downloads the weights at build time), its checksum, and the offline message.

The real file cannot be fetched from here (no internet), so a local HTTP server stands in for
storage.googleapis.com; what is checked is the code path, not Google's file.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from extractor import weights

PAYLOAD = b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 5000  # ~1.3 MB: several read blocks


@pytest.fixture
def server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/{weights.NOTOP_FILE}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv(weights.WEIGHTS_ENV, raising=False)
    return tmp_path / "keras"


def test_imagenet_is_downloaded_once_into_the_keras_cache(
    server: str, keras_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(weights, "NOTOP_URL", server)
    monkeypatch.setattr(weights, "NOTOP_MD5", hashlib.md5(PAYLOAD).hexdigest())
    path = weights.resolve_weights("imagenet")
    assert path == keras_home / "models" / weights.NOTOP_FILE
    assert path.read_bytes() == PAYLOAD
    assert [p.name for p in path.parent.iterdir()] == [weights.NOTOP_FILE]  # no .part left
    monkeypatch.setattr(weights, "NOTOP_URL", "http://127.0.0.1:9/unreachable")
    assert weights.resolve_weights("imagenet") == path  # found in the cache: no download


def test_a_download_with_the_wrong_checksum_is_refused_and_not_kept(
    server: str, keras_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(weights, "NOTOP_URL", server)
    with pytest.raises(weights.WeightsError, match=rf"MD5 .*, not {weights.NOTOP_MD5}"):
        weights.resolve_weights("imagenet")
    assert list((keras_home / "models").iterdir()) == []


def test_offline_says_how_to_supply_the_file(
    keras_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:  # a local port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(weights, "NOTOP_URL", f"http://127.0.0.1:{port}/{weights.NOTOP_FILE}")
    with pytest.raises(weights.WeightsError, match="cannot be reached") as info:
        weights.resolve_weights("imagenet")
    assert weights.WEIGHTS_ENV in str(info.value) and "--weights" in str(info.value)
    assert not (keras_home / "models" / weights.NOTOP_FILE).exists()
