"""Triton's own HTTP client against a real `serve --heads-dir` (subprocess, real VGG16 weights,
real ELPV images): readiness, metadata, inference equal to /predict's, a version added by SIGHUP,
and the README's client example."""

from __future__ import annotations

import base64
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from headfolders import install
from liveserver import free_port
from tritonclient.utils import InferenceServerException

REPO = Path(__file__).resolve().parents[2]
KEY = "k-v2-7"


def auth() -> dict[str, str]:
    """A fresh headers dict each call: tritonclient's infer() writes into the one it is given."""
    return {"X-API-Key": KEY}


pytestmark = pytest.mark.slow


@pytest.fixture
def server(head_dir: Path, tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """`serve --heads-dir` with the logistic-regression head as elpv version 1; polling off, so
    only SIGHUP and /admin/reload rescan."""
    root = tmp_path / "heads"
    install(head_dir, root / "elpv" / "1")
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "--heads-dir", str(root), "--port", str(port),
             "--heads-poll-s", "0", "--max-batch-size", "4"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
            env={**os.environ, "FEATCACHE_API_KEY": KEY},
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not ready in 180 s:\n" + log.read_text()
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", root, proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()


def predict(url: str, path: Path, **params: str) -> dict:  # type: ignore[type-arg]
    r = httpx.post(f"http://{url}/predict", params={"head": "elpv", **params},
                   files={"file": (path.name, path.read_bytes())}, headers=auth(), timeout=60)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_tritonclient_against_serve(
    server: tuple[str, Path, subprocess.Popen[bytes]], elpv_images: list[Path],
    second_head_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, root, proc = server
    picks = elpv_images[::5]  # both classes, 5 images
    client = httpclient.InferenceServerClient(url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("elpv", headers=auth())
        assert client.is_model_ready("elpv", "1", headers=auth())
        assert not client.is_model_ready("elpv", "2", headers=auth())
        assert not client.is_model_ready("nope", headers=auth())
        assert not client.is_model_ready("elpv")  # no API key
        assert client.get_server_metadata(headers=auth())["name"] == "featcache"
        meta = client.get_model_metadata("elpv", headers=auth())
        assert meta["name"] == "elpv" and meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1]}]
        assert meta["outputs"][0]["shape"] == [-1, 2]
        classes = meta["parameters"]["classes"]
        assert classes == ["defective", "functional"]

        # Binary tensor data both ways (the client's default).
        tensor = httpclient.InferInput("IMAGE", [len(picks)], "BYTES")
        tensor.set_data_from_numpy(np.array([p.read_bytes() for p in picks], dtype=np.object_))
        result = client.infer("elpv", [tensor], headers=auth(), request_id="r1")
        assert result.get_response()["model_version"] == "1"
        assert result.get_response()["id"] == "r1"
        probabilities = result.as_numpy("PROBABILITIES")
        labels = [b.decode() for b in result.as_numpy("LABEL")]
        assert probabilities.dtype == np.float32 and probabilities.shape == (len(picks), 2)
        singles = [predict(url, p) for p in picks]
        for row, label, single in zip(probabilities, labels, singles, strict=True):
            assert single["version"] == "1"
            np.testing.assert_allclose(row, [single["probabilities"][c] for c in classes],
                                       rtol=0, atol=1e-6)
            assert label == single["label"]
        assert len(set(labels)) == 2  # real images of both classes, told apart

        # JSON both ways: BYTES elements as base64 text.
        encoded = np.array([base64.b64encode(p.read_bytes()) for p in picks[:2]],
                           dtype=np.object_)
        tensor = httpclient.InferInput("IMAGE", [2], "BYTES")
        tensor.set_data_from_numpy(encoded, binary_data=False)
        outputs = [httpclient.InferRequestedOutput("PROBABILITIES", binary_data=False)]
        json_result = client.infer("elpv", [tensor], outputs=outputs, headers=auth())
        np.testing.assert_allclose(json_result.as_numpy("PROBABILITIES"), probabilities[:2],
                                   rtol=0, atol=1e-7)
        assert json_result.as_numpy("LABEL") is None  # not asked for

        with pytest.raises(InferenceServerException) as info:
            client.infer("nope", [tensor], headers=auth())
        assert info.value.status() == "404" and "nope" in info.value.message()

        # Version 2 (the SVM head) arrives; SIGHUP loads it (polling is off).
        install(second_head_dir, root / "elpv" / "2")
        assert client.get_model_metadata("elpv", headers=auth())["versions"] == ["1"]
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while client.get_model_metadata("elpv", headers=auth())["versions"] != ["1", "2"]:
            assert time.monotonic() < deadline, "SIGHUP did not load version 2"
            time.sleep(0.1)
        latest = client.infer("elpv", [tensor], headers=auth())
        assert latest.get_response()["model_version"] == "2"
        pinned = client.infer("elpv", [tensor], model_version="1", headers=auth())
        np.testing.assert_allclose(pinned.as_numpy("PROBABILITIES"), probabilities[:2],
                                   rtol=0, atol=1e-7)
        assert predict(url, picks[0], version="1")["version"] == "1"
        assert predict(url, picks[0])["version"] == "2"
    finally:
        client.close()

    reload = httpx.post(f"http://{url}/admin/reload", headers=auth(), timeout=60)
    assert reload.status_code == 200 and reload.json()["changes"] == []
    assert httpx.post(f"http://{url}/admin/reload").status_code == 401

    # The README's example, run as written.
    spec = importlib.util.spec_from_file_location("triton_client", REPO / "examples" /
                                                  "triton_client.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setenv("FEATCACHE_API_KEY", KEY)
    answers = example.classify(url, "elpv", [str(p) for p in picks], version="1")
    for (label, by_class), single in zip(answers, singles, strict=True):
        assert label == single["label"]
        np.testing.assert_allclose([by_class[c] for c in classes],
                                   [single["probabilities"][c] for c in classes], atol=1e-6)


def test_readme_shows_the_example() -> None:
    readme = (REPO / "README.md").read_text()
    source = (REPO / "examples" / "triton_client.py").read_text()
    body = source[source.index("from __future__"):]
    assert body in readme, "README's V2 example must be examples/triton_client.py as it is"
