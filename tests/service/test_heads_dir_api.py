"""--heads-dir through the HTTP API, in process on a fake conv base: /heads, /admin/reload,
versions on /predict, the default head, readiness with no head yet."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient
from headfolders import edit_metadata, install
from imagegen import encode, gradient
from PIL import Image

from service.app import create_app

GOOD = encode(Image.fromarray(gradient(64, 64, seed=3)))


def assert_error(response, status: int, code: str, fragment: str = "") -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert fragment.lower() in error["message"].lower(), error


def upload() -> dict[str, tuple[str, bytes]]:
    return {"file": ("a.png", GOOD)}


def test_versions_default_and_reload(fake_app, head_dir: Path, second_head_dir: Path,  # type: ignore[no-untyped-def]
                                     tmp_path: Path) -> None:
    root = tmp_path / "heads"
    install(head_dir, root / "cells" / "1")
    with fake_app(heads=[], heads_dir=root, heads_poll_s=0, api_key="k") as client:
        key = {"X-API-Key": "k"}
        r = client.post("/predict", files=upload(), headers=key)
        assert r.status_code == 200, r.text
        assert (r.json()["head"], r.json()["version"]) == ("cells", "1")  # the only head

        install(second_head_dir, root / "cells" / "2")
        staged = install(second_head_dir, tmp_path / "staging" / "bad")
        edit_metadata(staged, spec={"weights_sha256": "0" * 64})
        install(staged, root / "other" / "1")
        assert_error(client.post("/admin/reload"), 401, "unauthorized")
        r = client.post("/admin/reload", headers=key)
        assert r.status_code == 200, r.text
        changes = {(c["head"], c["version"]): c for c in r.json()["changes"]}
        assert changes[("cells", "2")]["change"] == "added"
        assert changes[("other", "1")]["change"] == "failed"
        assert "weights_sha256" in changes[("other", "1")]["reason"]

        body = client.get("/heads", headers=key).json()
        assert body["default"] == "cells"  # "other" is not served: still one head
        [cells] = body["heads"]
        assert cells["version"] == "2" and cells["default"] is True
        assert [(v["version"], v["status"], v["served"]) for v in cells["versions"]] == [
            ("1", "available", True), ("2", "available", True)]
        assert body["unserved"] == [{"name": "other", "versions": [
            {"version": "1", "status": "failed", "served": False,
             "reason": changes[("other", "1")]["reason"]}]}]
        assert str(tmp_path) not in client.get("/heads", headers=key).text

        r = client.post("/predict?version=1", files=upload(), headers=key).json()
        assert r["version"] == "1"
        assert client.post("/predict", files=upload(), headers=key).json()["version"] == "2"
        batch = client.post("/predict/batch?head=cells&version=1",
                            files=[("files", ("a.png", GOOD))], headers=key).json()
        assert (batch["head"], batch["version"]) == ("cells", "1")
        assert_error(client.post("/predict?version=7", files=upload(), headers=key), 404,
                     "unknown_version", "1, 2")

        # A second servable head and no default: a request must name one.
        install(head_dir, root / "more")
        client.post("/admin/reload", headers=key)
        assert_error(client.post("/predict", files=upload(), headers=key), 422,
                     "head_required", "cells, more")
        r = client.post("/predict?head=more", files=upload(), headers=key).json()
        assert (r["head"], r["version"]) == ("more", None)


def test_no_head_yet_is_not_ready_then_polled_in(settings_for, make_fake, head_dir: Path,  # type: ignore[no-untyped-def]
                                                 tmp_path: Path) -> None:
    root = tmp_path / "heads"
    root.mkdir()
    fake = make_fake()
    app = create_app(settings_for([], heads_dir=root, heads_poll_s=0.1),
                     backbone_factory=lambda *_: fake)
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while "loading" in client.get("/ready").text:  # the conv base, then: no head
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert_error(client.get("/ready"), 503, "not_ready", "no head")
        assert client.get("/v2/health/ready").status_code == 503
        assert_error(client.post("/predict", files=upload()), 503, "not_ready")
        install(head_dir, root / "cells" / "1")
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the poll did not pick the head up"
            time.sleep(0.05)
        assert client.post("/predict", files=upload()).json()["head"] == "cells"


def test_reload_without_heads_dir_is_409(fake_app) -> None:  # type: ignore[no-untyped-def]
    with fake_app(client=("127.0.0.1", 50000)) as client:  # no API key: loopback only
        assert_error(client.post("/admin/reload"), 409, "no_heads_dir", "--heads-dir")
        [head] = client.get("/heads").json()["heads"]
        assert head["source"] == "head" and head["version"] is None
        assert head["versions"] == [{"version": None, "status": "available", "reason": None,
                                     "served": True}]
