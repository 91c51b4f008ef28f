"""The lean serving image (docker/Dockerfile target `serve`): `serve` without TensorFlow, Keras
or matplotlib installed.

Each test runs the real `serve` in a subprocess whose imports of those packages fail, as they do
where the packages are absent (a sys.meta_path finder raising ImportError, the same finder
tests/extractor/test_runtime.py uses), and which records every attempt. A scikit-learn head is
served on ONNX Runtime with no attempt to import them at all (only checks whether Keras is
there), the ONNX graph exported on first start from
the weights file; a Keras head is refused with one line that names the full image, both as a
--head (the server does not start) and in --heads-dir (/heads reports it, the rest is served).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from liveserver import free_port

pytestmark = pytest.mark.slow

BLOCKED = ("tensorflow", "keras", "tf_keras", "matplotlib")

_LEAN = f"""
import importlib.abc, importlib.util, os, sys

class Block(importlib.abc.MetaPathFinder):
    probing = False

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            if not Block.probing:  # an import, not a check whether the package is there
                with open(os.environ["LEAN_TEST_ATTEMPTS"], "a") as log:
                    log.write(name + "\\n")
            raise ImportError(f"No module named {{name!r}} (blocked: the lean image)")
        return None

_find_spec = importlib.util.find_spec

def find_spec(name, package=None):
    Block.probing = True
    try:
        return _find_spec(name, package)
    finally:
        Block.probing = False

importlib.util.find_spec = find_spec
sys.meta_path.insert(0, Block())
from service.cli import main
sys.exit(main(sys.argv[1:]))
"""

#: A dense head small enough to train in seconds on the small cache.
FAST_DENSE = {"epochs": 3, "patience": 2, "learning_rate": 5e-3, "units": 8, "batch_size": 16}


@pytest.fixture(scope="module")
def dense_head_dir(small_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real dense (Keras) head, as train-head writes it in the full image."""
    from classifier.training import train

    return train(small_cache, tmp_path_factory.mktemp("heads") / "elpv-dense", head="dense",
                 params=FAST_DENSE)


class Lean:
    """`serve ARGS` in a subprocess without TensorFlow, Keras or matplotlib."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.port = free_port()
        self.log = tmp_path / "serve.log"
        self.attempts = tmp_path / "attempts.txt"
        self.attempts.touch()
        env = {**os.environ, "LEAN_TEST_ATTEMPTS": str(self.attempts),
               # A fresh home: no ONNX export yet, so the first start makes one without TF.
               "FEATCACHE_HOME": str(tmp_path / "home")}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _LEAN, *args, "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if self.client.get("/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not ready:\n" + self.log.read_text()
            time.sleep(0.2)

    def stop(self) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop, exit status 0
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture
def lean(tmp_path: Path) -> Iterator[list[Lean]]:
    servers: list[Lean] = []
    yield servers
    for server in servers:
        server.stop()


def test_serves_a_sklearn_head_without_tensorflow_keras_or_matplotlib(
    head_dir: Path, dense_head_dir: Path, elpv_images: list[Path], tmp_path: Path,
    lean: list[Lean],
) -> None:
    heads = tmp_path / "heads"
    heads.mkdir()
    shutil.copytree(dense_head_dir, heads / "dense")
    server = Lean(tmp_path, "--head", str(head_dir), "--heads-dir", str(heads),
                  "--heads-poll-s", "0", "--max-batch-size", "2")
    lean.append(server)
    server.wait_ready()

    data = elpv_images[0].read_bytes()
    r = server.client.post("/predict", files={"file": ("a.png", data)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["head"] == head_dir.name
    assert body["label"] in ("defective", "functional")
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-6

    # The Keras head in the heads folder is not served, and /heads says why, naming the image.
    listing = server.client.get("/heads").json()
    assert [h["name"] for h in listing["heads"]] == [head_dir.name]
    [unserved] = listing["unserved"]
    assert unserved["name"] == "dense"
    [version] = unserved["versions"]
    assert version["status"] == "failed"
    assert "Keras head" in version["reason"] and "full image" in version["reason"]

    # On ONNX Runtime, exported on this first start from the weights file.
    log = server.log.read_text()
    assert "on onnxruntime fp32" in log, log
    assert list((tmp_path / "home" / "onnx").glob("vgg16-*.onnx"))
    assert server.stop() == 0, server.log.read_text()
    # Nothing so much as tried to import them.
    assert server.attempts.read_text() == "", server.attempts.read_text()


def test_refuses_a_keras_head_with_one_line_naming_the_full_image(
    dense_head_dir: Path, tmp_path: Path, lean: list[Lean],
) -> None:
    server = Lean(tmp_path, "--head", str(dense_head_dir))
    lean.append(server)
    code = server.proc.wait(120)
    log = server.log.read_text()
    assert code == 1, log
    assert log.startswith("serve: error: cannot serve head"), log
    assert "dense head, a Keras model" in log and "full image" in log
    assert "Traceback" not in log and len(log.strip().splitlines()) == 1, log
    assert json.loads((dense_head_dir / "metadata.json").read_text())["kind"] == "dense"
    assert server.attempts.read_text() == ""
