"""serve --precision: a head is served only by a base of its own precision and int8 model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from extractor.spec import FeatureSpec
from service.app import create_app
from service.errors import HeadSpecMismatchError, StartupError


def _head_with_spec(head_dir: Path, tmp_path: Path, **changes: object) -> Path:
    """A copy of the real head whose recorded spec says its features were made otherwise."""
    import shutil

    copy = tmp_path / "head"
    shutil.copytree(head_dir, copy)
    meta_path = copy / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["spec"] = dataclasses.replace(FeatureSpec.from_dict(meta["spec"]), **changes).to_dict()  # type: ignore[arg-type]
    meta_path.write_text(json.dumps(meta))
    return copy


def test_fp32_head_is_refused_by_an_int8_server(
    head_dir: Path, settings_for, make_fake  # type: ignore[no-untyped-def]
) -> None:
    fake = make_fake()
    app = create_app(settings_for([head_dir], precision="int8"), backbone_factory=lambda *_: fake)
    with pytest.raises(HeadSpecMismatchError, match="precision: 'fp32' vs 'int8'") as info, \
            TestClient(app):
        pass
    assert "--precision fp32" in str(info.value)
    assert fake.batch_sizes == []  # refused before anything ran


def test_int8_head_is_refused_by_an_fp32_server(
    head_dir: Path, tmp_path: Path, settings_for, make_fake  # type: ignore[no-untyped-def]
) -> None:
    head = _head_with_spec(head_dir, tmp_path, precision="int8", quantized_sha256="a" * 64)
    app = create_app(settings_for([head]), backbone_factory=lambda *_: make_fake())
    with pytest.raises(HeadSpecMismatchError, match="precision: 'int8' vs 'fp32'") as info, \
            TestClient(app):
        pass
    assert "--precision int8" in str(info.value)


def test_settings_read_the_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.config import Settings

    monkeypatch.setenv("FEATCACHE_PRECISION", "int8")
    assert Settings(_env_file=None).precision == "int8"  # type: ignore[call-arg]
    monkeypatch.setenv("FEATCACHE_PRECISION", "int4")
    with pytest.raises(ValueError, match="precision"):
        Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.slow
def test_int8_head_is_served_by_its_own_model_found_by_hash(
    head_dir: Path, tmp_path: Path, weights_path: Path, settings_for, make_fake  # type: ignore[no-untyped-def]
) -> None:
    from extractor.backbone import make_spec

    spec = make_spec(weights_path, "block5_pool", 150, precision="int8")  # this machine's model
    assert spec.quantized_sha256
    head = _head_with_spec(head_dir, tmp_path, precision="int8",
                           quantized_sha256=spec.quantized_sha256)
    built: list[FeatureSpec] = []

    def factory(weights: Path, expected: FeatureSpec):  # type: ignore[no-untyped-def]
        built.append(expected)
        fake = make_fake()
        fake.spec = expected
        return fake

    app = create_app(settings_for([head], precision="int8"), backbone_factory=factory)
    with TestClient(app) as client:
        for _ in range(500):
            if client.get("/ready").status_code == 200:
                break
            import time

            time.sleep(0.01)
        assert client.get("/ready").status_code == 200
    assert built and built[0].quantized_sha256 == spec.quantized_sha256
    assert built[0].precision == "int8"

    other = _head_with_spec(head_dir, tmp_path / "x", precision="int8",
                            quantized_sha256="f" * 64)
    app = create_app(settings_for([other], precision="int8"), backbone_factory=factory)
    with pytest.raises(StartupError, match=r"quantized_sha256 f{64}.*Copy the file"), \
            TestClient(app):
        pass
