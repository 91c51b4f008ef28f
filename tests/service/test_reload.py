"""Heads replaced under load: a real HTTP server (uvicorn, in a thread, on a fake conv base),
threads posting to it while versions are added, broken and removed. No request may fail, and
every answer must come from one complete version: its version number and its probabilities."""

from __future__ import annotations

import base64
import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from headfolders import install, model_file
from imagegen import encode
from liveserver import free_port
from PIL import Image

from classifier.artifact import load_head
from extractor.images import decode_image
from extractor.spec import FeatureSpec
from service.app import create_app

COLOURS = ["red", "green", "blue", "white", "black", "orange"]
IMAGES = [encode(Image.new("RGB", (64, 64), c)) for c in COLOURS]


@contextlib.contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve `app` on a free local port from a thread; yield its URL once /ready says 200."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, name="live-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                    break
            assert thread.is_alive() and time.monotonic() < deadline, "server not ready"
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def expected_probabilities(head_folder: Path, fake: Any, size: int) -> list[list[float]]:
    """What a complete copy of this head answers for each image on the fake conv base."""
    head = load_head(head_folder)
    features = fake(np.stack([decode_image(data, size) for data in IMAGES]))
    proba = head.predict_proba(features)
    return [[float(p) for p in row] for row in proba]


class Stream:
    """Threads posting images until stopped (or a hard cap); every answer is kept."""

    def __init__(self, url: str, threads: int = 4, cap_s: float = 90.0) -> None:
        self.url = url
        self.stop = threading.Event()
        self.answers: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._deadline = time.monotonic() + cap_s
        kinds = ["predict", "v2", "predict", "pinned"]
        self._threads = [threading.Thread(target=self._run, args=(kinds[i % 4], i), daemon=True)
                         for i in range(threads)]

    def __enter__(self) -> Stream:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(30)

    def versions_seen_since(self, start: int) -> set[str | None]:
        with self._lock:
            return {a["version"] for a in self.answers[start:]}

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def _run(self, kind: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set() and time.monotonic() < self._deadline:
                i = int(rng.integers(len(IMAGES)))
                answer = {"kind": kind, "image": i, **self._ask(client, kind, IMAGES[i])}
                with self._lock:
                    self.answers.append(answer)

    @staticmethod
    def _ask(client: httpx.Client, kind: str, image: bytes) -> dict[str, Any]:
        if kind == "v2":
            body = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                                "data": [base64.b64encode(image).decode()]}]}
            r = client.post("/v2/models/cells/infer", json=body)
            if r.status_code != 200:
                return {"status": r.status_code, "text": r.text, "version": None}
            out = {o["name"]: o for o in r.json()["outputs"]}
            return {"status": 200, "version": r.json().get("model_version"),
                    "probabilities": out["PROBABILITIES"]["data"]}
        params = {"head": "cells", **({"version": 1} if kind == "pinned" else {})}
        r = client.post("/predict", params=params, files={"file": ("x.png", image)})
        if r.status_code != 200:
            return {"status": r.status_code, "text": r.text, "version": None}
        body = r.json()
        return {"status": 200, "version": body["version"],
                "probabilities": [body["probabilities"][c] for c in ("defective", "functional")]}


def wait_for(condition: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_versions_swap_under_load(
    head_dir: Path, second_head_dir: Path, weights_path: Path, base_spec: FeatureSpec,
    make_fake, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    root = tmp_path / "heads"
    install(head_dir, root / "cells" / "1")
    fake = make_fake(delay_s=0.002)
    expected = {
        "1": expected_probabilities(head_dir, fake, base_spec.input_size),
        "2": expected_probabilities(second_head_dir, fake, base_spec.input_size),
    }
    # The two versions must answer differently, or "served by the right version" proves nothing.
    assert np.abs(np.array(expected["1"]) - np.array(expected["2"])).min() > 1e-3

    from service.config import Settings

    settings = Settings(_env_file=None, heads_dir=root, heads_poll_s=0.2,  # type: ignore[call-arg]
                        weights=str(weights_path), feature_cache_size=0)
    app = create_app(settings, backbone_factory=lambda *_: fake)
    with (live_server(app) as url, Stream(url) as stream,
          httpx.Client(base_url=url, timeout=30) as admin):
        wait_for(lambda: stream.count() > 40, "the first answers")

        # 2 arrives (copied beside, renamed in): picked up by the poll, no restart.
        install(second_head_dir, root / "cells" / "2")
        mark = stream.count()
        wait_for(lambda: "2" in stream.versions_seen_since(mark), "version 2 to serve")

        # 3 arrives broken: refused, reported, and 2 keeps serving.
        staged = install(second_head_dir, tmp_path / "staging" / "3")
        with open(model_file(staged), "ab") as fh:
            fh.write(b"\0")
        install(staged, root / "cells" / "3")
        reload = admin.post("/admin/reload").json()
        wait_for(lambda: any(v["version"] == "3" and v["status"] == "failed"
                             for h in admin.get("/heads").json()["heads"]
                             for v in h["versions"]), "version 3 to be failed", 15)
        heads = admin.get("/heads").json()
        [cells] = heads["heads"]
        assert cells["version"] == "2" and cells["source"] == "heads_dir"
        by_version = {v["version"]: v for v in cells["versions"]}
        assert by_version["3"]["served"] is False and "SHA-256" in by_version["3"]["reason"]
        assert str(tmp_path) not in str(heads) and str(tmp_path) not in str(reload)
        mark = stream.count()
        wait_for(lambda: stream.count() > mark + 40, "answers after the broken version")
        assert stream.versions_seen_since(mark) <= {"1", "2"}

        # 2 is deleted (file by file, as rm -r does): back to 1.
        shutil.rmtree(root / "cells" / "2")
        mark = stream.count()
        wait_for(lambda: "2" not in stream.versions_seen_since(stream.count() - 8)
                 and stream.count() > mark + 40, "version 1 to serve again")
    answers = stream.answers
    failures = [a for a in answers if a["status"] != 200]
    assert not failures, failures[:5]
    assert {a["version"] for a in answers} == {"1", "2"}
    assert {a["version"] for a in answers if a["kind"] == "pinned"} == {"1"}
    assert {a["version"] for a in answers if a["kind"] == "v2"} == {"1", "2"}
    for a in answers:
        # Heads compute in float32 (and /v2 answers FP32): equal to float32 precision, where
        # the two versions differ by more than 1e-3.
        np.testing.assert_allclose(a["probabilities"], expected[a["version"]][a["image"]],
                                   rtol=0, atol=1e-6, err_msg=str(a))
    assert len(answers) > 160
