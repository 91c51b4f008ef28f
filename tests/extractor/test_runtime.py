"""The runtime choice: ONNX Runtime features equal the Keras reference; the export from the
weights file needs no TensorFlow; the export cache."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from extractor import backbone as bb
from extractor.images import decode_image
from extractor.runtimes import onnx_export, store


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("featcache_home")


@pytest.fixture
def onnx_home(onnx_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Exports go to a temporary FEATCACHE_HOME shared by this module's tests, never ~/.cache."""
    monkeypatch.setenv(store.HOME_ENV, str(onnx_dir))
    return onnx_dir / "onnx"


def _real_pixels(elpv_dir: Path, per_folder: int = 4) -> np.ndarray:
    files = []
    for split in ("train", "validation"):
        for cls in ("defective", "functional"):
            files += sorted((elpv_dir / split / cls).glob("*.png"))[:per_folder]
    return np.stack([decode_image(f.read_bytes(), 150) for f in files])


# --------------------------------------------------------------------------- fast


def test_resolve_runtime(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    assert bb.resolve_runtime("keras") == "keras"
    with pytest.raises(ValueError, match="unknown runtime 'tflite'"):
        bb.resolve_runtime("tflite")
    with pytest.raises(ValueError, match="int8 runs on onnxruntime only"):
        bb.resolve_runtime("keras", "int8")
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        bb.resolve_runtime("auto", "int4")
    monkeypatch.setattr(onnx_export, "available", lambda: True)
    assert bb.resolve_runtime("auto") == "onnxruntime"
    assert bb.resolve_runtime("auto", "int8") == "onnxruntime"
    monkeypatch.setattr(onnx_export, "available", lambda: False)
    with caplog.at_level(logging.INFO, logger="extractor.runtimes"):
        assert bb.resolve_runtime("auto") == "keras"
    assert "is not installed" in caplog.text
    with pytest.raises(ValueError, match="pip install onnxruntime"):
        bb.resolve_runtime("onnxruntime")
    with pytest.raises(ValueError, match="int8 needs the onnxruntime"):
        bb.resolve_runtime("auto", "int8")


def test_make_spec_records_runtime(weights_path: Path) -> None:
    keras_spec = bb.make_spec(weights_path, "block5_pool", 150, "keras")
    ort_spec = bb.make_spec(weights_path, "block5_pool", 150, "onnxruntime")
    assert ort_spec.runtime == "onnxruntime"
    assert keras_spec.differences(ort_spec) == {}  # informational, not a compatibility field


def test_export_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "w" / "vgg.h5"
    monkeypatch.delenv(store.HOME_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # platformdirs honours it
    assert store.candidate_dirs(weights) == [tmp_path / "xdg" / "featcache" / "onnx"]
    monkeypatch.setenv(store.HOME_ENV, str(tmp_path / "home"))
    assert store.candidate_dirs(weights) == [tmp_path / "home" / "onnx"]
    name = onnx_export.export_name("ab" * 32, ("block5_pool",), 150)
    assert "ab" * 32 in name and "block5_pool-150" in name and name.endswith(".onnx")


def test_save_atomic_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    store.save_atomic(b"first", path)
    store.save_atomic(b"second", path)
    assert path.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600


def test_unwritable_cache_keeps_export_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setattr(store, "candidate_dirs", lambda _w: [blocker / "onnx"])
    monkeypatch.setattr(onnx_export, "build", lambda *_a: b"onnx-bytes")
    with caplog.at_level(logging.WARNING, logger="extractor.runtimes.store"):
        source, origin = onnx_export.load_or_export(
            tmp_path / "w.h5", "ab" * 32, ("block5_pool",), 150)
    assert (source, origin) == (b"onnx-bytes", "memory")
    assert "kept in memory" in caplog.text


def test_read_only_weights_folder_is_never_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "assets"
    folder.mkdir()
    monkeypatch.delenv(store.HOME_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(onnx_export, "build", lambda *_a: b"onnx-bytes")
    folder.chmod(0o555)  # as the shared weights folder is, even when running as root
    try:
        source, _ = onnx_export.load_or_export(folder / "w.h5", "ab" * 32, ("block5_pool",),
                                                 150)
    finally:
        folder.chmod(0o755)
    assert list(folder.iterdir()) == []
    assert source == b"onnx-bytes"
    assert [p.name for p in (tmp_path / "xdg" / "featcache" / "onnx").iterdir()] == [
        onnx_export.export_name("ab" * 32, ("block5_pool",), 150)]


def test_cli_rejects_unknown_runtime(capsys: pytest.CaptureFixture[str]) -> None:
    from extractor.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--dir", ".", "--runtime", "tflite"])
    assert exc.value.code == 2
    assert "--runtime" in capsys.readouterr().err


# --------------------------------------------------------------------------- real weights


@pytest.mark.slow
def test_onnx_features_equal_keras_on_real_images(
    onnx_home: Path, weights_path: Path, elpv_dir: Path
) -> None:
    pixels = _real_pixels(elpv_dir)
    pooled = ("block3_pool", "block4_pool", "block5_pool")
    keras_base = bb.ConvBase(weights_path, runtime="keras", pooled_layers=pooled)
    ort_base = bb.ConvBase(weights_path, runtime="onnxruntime", pooled_layers=pooled)
    assert (keras_base.spec.runtime, ort_base.spec.runtime) == ("keras", "onnxruntime")
    assert keras_base.spec.differences(ort_base.spec) == {}
    reference = keras_base(pixels)
    ours = ort_base(pixels)
    assert sorted(ours) == sorted(reference) == sorted(keras_base.spec.stored_names())
    maps = ours["block5_pool"]
    assert maps.dtype == np.float32
    assert maps.shape == reference["block5_pool"].shape == (16, 4, 4, 512)
    assert float(reference["block5_pool"].max()) > 10  # real activations, not zeros
    for name in ours:
        # Pooled block3/block4 activations reach ~10^3: float32 summation order alone moves
        # their last bits, so relative 1e-5 where that exceeds 1e-3.
        np.testing.assert_allclose(ours[name], reference[name], rtol=1e-5, atol=1e-3,
                                   err_msg=name)
    # Batch composition must not change an image's features.
    np.testing.assert_allclose(ort_base(pixels[3:4])["block5_pool"][0], maps[3], atol=1e-4)
    assert ort_base(pixels[:0])["block5_pool"].shape == (0, 4, 4, 512)
    assert ort_base(pixels[:0])["block3_pool/avg"].shape == (0, 256)


@pytest.mark.slow
def test_onnx_block4_pool_equals_keras(onnx_home: Path, weights_path: Path,
                                      elpv_dir: Path) -> None:
    pixels = _real_pixels(elpv_dir, per_folder=1)
    reference = bb.ConvBase(weights_path, layer="block4_pool", runtime="keras")(pixels)[
        "block4_pool"]
    ours = bb.ConvBase(weights_path, layer="block4_pool", runtime="onnxruntime")(pixels)[
        "block4_pool"]
    assert ours.shape == reference.shape == (4, 9, 9, 512)
    # block4_pool activations reach ~10^3, where float32 summation order alone moves the last
    # few bits: equal within 1e-3 absolute or 1e-5 relative, whichever is larger.
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-3)


@pytest.mark.slow
def test_export_is_cached_by_weights_hash(
    onnx_home: Path, weights_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = bb.ConvBase(weights_path, runtime="onnxruntime")
    name = onnx_export.export_name(first.spec.weights_sha256, ("block5_pool",), 150)
    assert (onnx_home / name).is_file()
    assert [p.name for p in onnx_home.iterdir() if p.name.startswith(".")] == []

    def no_export(*_a: object) -> None:
        raise AssertionError("a cached export must not be built again")

    monkeypatch.setattr(onnx_export, "build", no_export)
    again = bb.ConvBase(weights_path, runtime="onnxruntime", threads=1)
    pixels = np.zeros((1, 150, 150, 3), np.uint8)
    np.testing.assert_allclose(again(pixels)["block5_pool"], first(pixels)["block5_pool"],
                               atol=1e-5)


@pytest.mark.slow
def test_cache_records_runtime(onnx_home: Path, small_image_dir: Path, tmp_path: Path,
                               weights_path: Path) -> None:
    from extractor.runner import Options, run

    out = tmp_path / "ort.h5"
    summary = run(Options(directory=small_image_dir, out=out, weights=str(weights_path),
                          progress=False, runtime="onnxruntime"))
    assert summary.runtime == "onnxruntime"
    with h5py.File(out, "r") as f:
        assert f.attrs["runtime"] == "onnxruntime"
        assert f["features"].shape == (24, 4, 4, 512)


def test_weights_file_that_is_not_vgg16_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("block1_conv1")
        g.attrs["weight_names"] = [b"block1_conv1/kernel:0", b"block1_conv1/bias:0"]
        g.create_dataset("block1_conv1/kernel:0", data=np.zeros((5, 5, 3, 64), np.float32))
        g.create_dataset("block1_conv1/bias:0", data=np.zeros(64, np.float32))
    with pytest.raises(onnx_export.ExportError, match=r"block1_conv1.*\(3, 3, 3, 64\)"):
        onnx_export.build(path, ("block5_pool",), 150)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(onnx_export.ExportError, match="cannot read"):
        onnx_export.read_kernels(tmp_path / "junk.h5")


_NO_TENSORFLOW = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "jax", "torch"):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Block())
"""


@pytest.mark.slow
def test_onnxruntime_runs_without_tensorflow_or_keras(
    tmp_path: Path, weights_path: Path, elpv_dir: Path
) -> None:
    """The lean serving image: export from the weights file and run, with the imports blocked."""
    pixels = _real_pixels(elpv_dir, per_folder=1)
    np.save(tmp_path / "pixels.npy", pixels)
    reference = bb.ConvBase(weights_path, runtime="keras")(pixels)["block5_pool"]
    script = _NO_TENSORFLOW + textwrap.dedent(f"""
        import numpy as np
        for name in ("tensorflow", "keras"):
            try:
                __import__(name)
            except ImportError:
                pass
            else:
                raise SystemExit(name + " imported")
        from extractor.backbone import ConvBase
        base = ConvBase({str(weights_path)!r}, runtime="onnxruntime")
        np.save({str(tmp_path / "ours.npy")!r}, base(np.load({str(tmp_path / "pixels.npy")!r}))
                ["block5_pool"])
        assert not any(m.split(".")[0] in ("tensorflow", "keras") for m in sys.modules)
    """)
    env = {**os.environ, store.HOME_ENV: str(tmp_path / "home")}  # a fresh home: export anew
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "home" / "onnx").glob("vgg16-*.onnx"))  # exported in there
    ours = np.load(tmp_path / "ours.npy")
    assert ours.shape == reference.shape == (4, 4, 4, 512)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-3)


def test_gpu_provider_falls_back_to_the_cpu(monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    import onnxruntime

    from extractor.runtimes import ort

    monkeypatch.delenv(ort.PROVIDERS_ENV, raising=False)
    assert ort.providers() == ["CPUExecutionProvider"]
    monkeypatch.setenv(ort.PROVIDERS_ENV, "NoSuchExecutionProvider")
    with caplog.at_level(logging.WARNING, logger="extractor.runtimes.ort"):
        assert ort.providers() == ["CPUExecutionProvider"]
    assert "has no NoSuchExecutionProvider" in caplog.text
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setenv(ort.PROVIDERS_ENV, "CUDAExecutionProvider")
    assert ort.providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
