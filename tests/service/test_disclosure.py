"""Issue 11, item 5: /ready and /heads say what a client needs and nothing of the server's
insides (exception text, absolute paths); the details stay in the log and the metadata file."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app


def test_ready_after_a_failed_load_says_nothing_internal(
    head_dir: Path, tmp_path: Path, settings_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    secret = f"{tmp_path}/private/vgg16_notop.h5"

    def broken(*_: Any) -> Any:
        raise OSError(f"Unable to open file (truncated file: {secret})")

    failures: list[BaseException] = []
    app = create_app(settings_for([head_dir]), backbone_factory=broken,
                     on_load_failure=failures.append)
    with caplog.at_level(logging.ERROR), TestClient(app) as client:
        for _ in range(500):
            if failures:
                break
            time.sleep(0.01)
        r = client.get("/ready")
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
    message = r.json()["error"]["message"]
    assert "failed to load" in message and "log" in message
    assert secret not in r.text and "truncated" not in r.text
    assert secret in caplog.text  # the operator still learns why


def test_heads_shows_no_absolute_paths(fake_app, head_dir: Path) -> None:  # type: ignore[no-untyped-def]
    on_disk = json.loads((head_dir / "metadata.json").read_text())
    train_cache = on_disk["data"]["train_cache"]
    assert Path(train_cache).is_absolute()  # what the metadata file keeps
    with fake_app(warmup=False) as client:
        r = client.get("/heads")
    assert r.status_code == 200
    assert str(Path(train_cache).parent) not in r.text
    assert str(head_dir.parent) not in r.text
    metadata = r.json()["heads"][0]["metadata"]
    assert metadata["data"]["train_cache"] == Path(train_cache).name  # still useful
    assert metadata["kind"] == on_disk["kind"] and metadata["classes"] == on_disk["classes"]
