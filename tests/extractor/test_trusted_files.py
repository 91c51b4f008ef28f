"""Models featcache keeps are kept in its own folder and checked before use (issue 20, item 8):
never beside the weights file, never trusted by their file name alone."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from extractor.runtimes import int8, onnx_export, store
from extractor.weights import weights_sha256 as sha256_file

LAYERS = ("block5_pool",)


def test_exports_never_go_beside_the_weights(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "assets"
    folder.mkdir()  # writable, as a weights folder often is (and any folder is, to root)
    monkeypatch.delenv(store.HOME_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(onnx_export, "build", lambda *_a: b"onnx-bytes")
    data, origin = onnx_export.load_or_export(folder / "w.h5", "ab" * 32, LAYERS, 150)
    assert list(folder.iterdir()) == []
    own = tmp_path / "xdg" / "featcache" / "onnx"
    assert data == b"onnx-bytes" and Path(origin).parent == own
    assert store.candidate_dirs(folder / "w.h5") == [own]
    assert own.stat().st_mode & 0o077 == 0  # a folder featcache makes is private


@pytest.fixture(scope="module")
def export(weights_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """The real export, made once into a home of its own: (its file, its bytes)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(store.HOME_ENV, str(home))
        data, origin = onnx_export.load_or_export(weights_path, sha256_file(weights_path),
                                                  LAYERS, 150)
    return Path(origin), data


def tampered(data: bytes) -> bytes:
    """The export with one bias changed: a valid ONNX model that makes other features."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(data)
    for i, t in enumerate(model.graph.initializer):
        if t.name == "block5_conv3_b":
            value = numpy_helper.to_array(t) + np.float32(1.0)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, t.name))
    out: bytes = model.SerializeToString()
    return out


def other_export(data: bytes) -> bytes:
    """The export with the record of other weights: copied in from another weights file."""
    import onnx

    model = onnx.load_from_string(data)
    made = json.loads(model.metadata_props[0].value)
    onnx.helper.set_model_props(model, {onnx_export.RECORD_KEY: json.dumps(
        {**made, "weights_sha256": "cd" * 32}, sort_keys=True)})
    out: bytes = model.SerializeToString()
    return out


@pytest.mark.parametrize("how", ["one-bias-changed", "another-record", "not-onnx", "no-record"])
def test_a_kept_export_is_verified_before_use(
    how: str, export: tuple[Path, bytes], weights_path: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    path, good = export
    sha = sha256_file(weights_path)
    assert onnx_export.verify(good, weights_path, sha, LAYERS, 150) is None
    home = tmp_path / "home"
    (home / "onnx").mkdir(parents=True)
    planted = home / "onnx" / path.name
    if how == "one-bias-changed":
        planted.write_bytes(tampered(good))
    elif how == "another-record":
        planted.write_bytes(other_export(good))
    elif how == "not-onnx":
        planted.write_bytes(b"\x08\x07 not a model")
    else:  # an export made before exports recorded what they are made from
        planted.write_bytes(onnx_export.build(weights_path, LAYERS, 150))
    monkeypatch.setenv(store.HOME_ENV, str(home))
    rebuilt: list[bool] = []

    def build(*args: object) -> bytes:
        rebuilt.append(True)
        return good

    monkeypatch.setattr(onnx_export, "build", build)
    with caplog.at_level(logging.WARNING, logger="extractor.runtimes.onnx_export"):
        data, origin = onnx_export.load_or_export(weights_path, sha, LAYERS, 150)
    assert origin == str(planted)
    assert data == good and rebuilt == [True]
    assert f"ignoring {planted}" in caplog.text
    assert planted.read_bytes() == good  # replaced by the real export
    monkeypatch.undo()


def test_a_world_writable_folder_is_not_trusted(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / "onnx").mkdir(parents=True)
    (home / "onnx" / "vgg16-x.onnx").write_bytes(b"x")
    monkeypatch.setenv(store.HOME_ENV, str(home))
    assert list(store.find(tmp_path / "w.h5", "vgg16-*.onnx")) == [home / "onnx" / "vgg16-x.onnx"]
    os.chmod(home / "onnx", 0o777)
    assert list(store.find(tmp_path / "w.h5", "vgg16-*.onnx")) == []


def int8_file(folder: Path, recipe: dict[str, object] | None, key: str) -> tuple[Path, str]:
    """A small ONNX model named as an int8 model is, with `recipe` stored in it."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    if recipe is not None:
        onnx.helper.set_model_props(model, {int8.METADATA_KEY: json.dumps(recipe,
                                                                          sort_keys=True)})
    data = model.SerializeToString()
    sha = hashlib.sha256(data).hexdigest()
    path = folder / int8.model_name("ab" * 32, 150, key, sha)
    path.write_bytes(data)
    return path, sha


def test_an_int8_model_is_trusted_for_its_recipe_not_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    folder = home / "onnx"
    folder.mkdir(parents=True)
    monkeypatch.setenv(store.HOME_ENV, str(home))
    weights = tmp_path / "w.h5"
    recipe = {"recipe": int8.RECIPE_VERSION, "weights_sha256": "ab" * 32, "input_size": 150,
              "calibration": "photos"}
    key = int8.recipe_key(recipe)
    path, sha = int8_file(folder, recipe, key)
    found = int8.find(weights, sha)
    assert found is not None and found.sha256 == sha and found.model == path
    path.unlink()

    # Bytes that hash to the name's SHA-256, but made by another recipe than the name's key.
    path, sha = int8_file(folder, {**recipe, "calibration": "folder"}, key)
    assert int8.find(weights, sha) is None
    path.unlink()
    path, sha = int8_file(folder, {**recipe, "input_size": 224}, int8.recipe_key(
        {**recipe, "input_size": 224}))  # a 224 px model named as a 150 px one
    assert int8.find(weights, sha) is None
    path.unlink()
    path, sha = int8_file(folder, None, key)  # no recipe at all
    assert int8.find(weights, sha) is None
