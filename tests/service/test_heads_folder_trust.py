"""The heads folder, second pass (issue 20, items 5-7): the conv base is chosen from heads that
load completely, a folder that blocks never takes the server down, a model is hashed once."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from headfolders import edit_metadata, install, model_file

from extractor.spec import FeatureSpec
from service import head_store
from service.app import _open_heads, create_app
from service.head_store import HeadStore

Settings = Callable[..., Any]

EXPERIMENT = {"spec": {"input_size": 224, "feature_shape": [7, 7, 512]}}


def served(store: HeadStore) -> dict[str, list[int | None]]:
    registry = store.current()
    return {name: [h.version for h in registry.versions(name)] for name in registry.names}


# -- item 5: which head decides the conv base --------------------------------------------------


def test_a_half_copied_head_never_decides_the_base(head_dir: Path, settings_for: Settings,
                                                    tmp_path: Path) -> None:
    root = tmp_path / "heads"
    install(head_dir, root / "main")
    # a-exp/1 (first by name), another input size, copied as far as its metadata.json.
    (root / "a-exp" / "1").mkdir(parents=True)
    shutil.copy(head_dir / "metadata.json", root / "a-exp" / "1")
    edit_metadata(root / "a-exp" / "1", **EXPERIMENT)

    store, _, base = _open_heads(settings_for([], heads_dir=root))
    assert (base.input_size, store.base_spec) == (150, base)
    assert served(store) == {"main": [None]}
    assert {s.name: s.status for s in store.statuses()} == {"main": "available",
                                                            "a-exp": "loading"}


def test_a_complete_head_of_another_size_does_not_take_down_the_first(
    head_dir: Path, settings_for: Settings, tmp_path: Path
) -> None:
    root = tmp_path / "heads"
    install(head_dir, root / "main")
    install(head_dir, root / "a-exp" / "1")  # first by name, complete, trained later
    edit_metadata(root / "a-exp" / "1", created="2099-01-01T00:00:00+00:00", **EXPERIMENT)

    store, _, base = _open_heads(settings_for([], heads_dir=root))
    assert base.input_size == 150 and served(store) == {"main": [None]}
    [refused] = [s for s in store.statuses() if s.name == "a-exp"]
    assert refused.status == "failed" and "input_size" in (refused.reason or "")
    # The same on every start: what decides is the heads, not the order of names.
    again, _, base_again = _open_heads(settings_for([], heads_dir=root))
    assert base_again == base and served(again) == served(store)

    # More versions served by the other size win; a default head breaks a tie.
    install(root / "a-exp" / "1", root / "a-exp" / "2")
    store, _, base = _open_heads(settings_for([], heads_dir=root))
    assert base.input_size == 224 and served(store) == {"a-exp": [1, 2]}
    shutil.rmtree(root / "a-exp" / "2")
    store, _, base = _open_heads(settings_for([], heads_dir=root,
                                               default_head="a-exp"))
    assert base.input_size == 224 and served(store) == {"a-exp": [1]}


def test_choose_spec_without_heads_is_none() -> None:
    assert head_store.choose_spec([]) is None


# -- item 6: a folder that blocks ----------------------------------------------------------------


def test_a_fifo_named_metadata_json_is_skipped_not_read(
    head_dir: Path, base_spec: FeatureSpec, tmp_path: Path
) -> None:
    root = tmp_path / "heads"
    install(head_dir, root / "cells" / "1")
    fifo = root / "cells" / "2" / "metadata.json"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    done = threading.Event()
    result: list[HeadStore] = []

    def open_store() -> None:
        result.append(HeadStore.open([], root, base_spec=base_spec, settle_s=0))
        done.set()

    threading.Thread(target=open_store, daemon=True).start()
    try:
        assert done.wait(30), "the scan blocked on a FIFO"
    finally:  # before the fix, a reader is parked in open(): give it an end of file
        with contextlib.suppress(OSError):  # nobody is reading it: as it should be
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    [store] = result
    assert served(store) == {"cells": [1]}
    status = {s.version: s for s in store.statuses()}[2]
    assert status.status == "failed" and "not a regular file" in (status.reason or "")


def test_a_blocked_scan_never_holds_health_and_reloads_share_one_scan(
    head_dir: Path, second_head_dir: Path, settings_for: Settings, make_fake: Any,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A version whose files block when read (a hung network mount): reloads answer 503
    scan_busy within the scan time limit, /health answers at once, and only one scan runs."""
    root = tmp_path / "heads"
    install(head_dir, root / "cells" / "1")
    monkeypatch.setattr(head_store, "SCAN_TIMEOUT_S", 1.0)
    hung = threading.Event()
    calls: list[str] = []
    real = head_store._completeness

    def completeness(path: Path) -> dict[str, Any]:
        if path.name == "2":
            calls.append(threading.current_thread().name)
            hung.wait(60)
        return real(path)

    monkeypatch.setattr(head_store, "_completeness", completeness)
    settings = settings_for([], heads_dir=root, heads_poll_s=0)
    fake = make_fake()
    app = create_app(settings, backbone_factory=lambda *_: fake)
    try:
        with TestClient(app, client=("127.0.0.1", 50000)) as client:  # admin: loopback
            install(second_head_dir, root / "cells" / "2")
            t0 = time.monotonic()
            with ThreadPoolExecutor(48) as pool:
                reloads = [pool.submit(client.post, "/admin/reload") for _ in range(45)]
                time.sleep(0.3)
                health = [_timed(lambda: client.get("/health")) for _ in range(5)]
                statuses = [f.result(timeout=30).status_code for f in reloads]
            assert statuses == [503] * 45
            assert time.monotonic() - t0 < 15
            assert all(r.status_code == 200 and s < 1.0 for r, s in health), health
            body = client.post("/admin/reload").json()
            assert body["error"]["code"] == "scan_busy"
            assert len(calls) == 1 and calls[0] == "featcache-heads-scan"

            hung.set()  # the mount answers again: the scan finishes, the next reload is served
            deadline = time.monotonic() + 30
            while True:
                r = client.post("/admin/reload")
                if r.status_code == 200:
                    [head] = client.get("/heads").json()["heads"]
                    if [v["version"] for v in head["versions"]
                            if v["status"] == "available"] == ["1", "2"]:
                        break
                assert time.monotonic() < deadline, r.text
                time.sleep(0.1)
            assert len(calls) <= 2  # the blocked scan, and at most one that waited behind it
    finally:
        hung.set()


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.monotonic()
    result = call()
    return result, time.monotonic() - t0


# -- item 7: one hash per load -------------------------------------------------------------------


def test_a_version_s_model_is_hashed_once(head_dir: Path, base_spec: FeatureSpec,
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "heads"
    root.mkdir()
    store = HeadStore.open([], root, base_spec=base_spec)
    install(head_dir, root / "cells" / "1")
    hashed: list[int] = []
    real = hashlib.sha256

    class Counting:
        def __init__(self, data: bytes = b"") -> None:
            self._h = real(data)
            hashed.append(len(data))

        def update(self, data: bytes) -> None:
            hashed.append(len(data))
            self._h.update(data)

        def hexdigest(self) -> str:
            return self._h.hexdigest()

    monkeypatch.setattr(hashlib, "sha256", Counting)
    [change] = store.scan()
    monkeypatch.undo()
    assert change.change == "added"
    # Each file the head records a hash of, once: the model, and its guard's arrays if any.
    version = root / "cells" / "1"
    guard = version / "ood.npz"
    assert sum(hashed) == model_file(version).stat().st_size + (
        guard.stat().st_size if guard.exists() else 0)
