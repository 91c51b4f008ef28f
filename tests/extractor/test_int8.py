"""int8: fidelity to fp32 on real images, one model made deterministically and found by hash,
caches that never mix precisions, resume, and the CPU checks."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from extractor import backbone as bb
from extractor import open_cache
from extractor.images import decode_image
from extractor.runner import ExtractError, Options, run
from extractor.runtimes import calibration, int8, store
from extractor.runtimes.cpu import CpuInfo, parse_cpuinfo

POOLED = ("block3_pool", "block4_pool", "block5_pool")
VNNI = CpuInfo("test CPU", frozenset({"avx2", "avx512f", "avx512_vnni"}))
AVX2 = CpuInfo("test CPU", frozenset({"avx2"}))


def _cosines(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float64]:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return np.asarray((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


@pytest.fixture(scope="session")
def int8_base(weights_path: Path) -> bb.ConvBase:
    """The int8 conv base, its model built once per test session (in the session's home)."""
    return bb.ConvBase(weights_path, precision="int8", pooled_layers=POOLED)


@pytest.fixture(scope="session")
def fp32_base(weights_path: Path) -> bb.ConvBase:
    return bb.ConvBase(weights_path, runtime="onnxruntime", pooled_layers=POOLED)


# --------------------------------------------------------------------------- fast


def test_widen_rounds_outward_to_7_significant_bits() -> None:
    assert int8.widen(0.0, 1.0) == (0.0, 1.0 + 1 / 64)  # the margin lifts a grid point a step
    assert int8.widen(-123.68, 151.061) == (-124.0, 152.0)
    lo, hi = int8.widen(-0.3, 99.5)
    assert lo <= -0.3 and hi >= 99.5
    assert hi / 99.5 - 1 < 1 / 32 and lo / -0.3 - 1 < 1 / 32
    # Differences in the last bits of a kernel's result do not move the range.
    assert int8.widen(0.0, 99.5)[1] == int8.widen(0.0, 99.5 * (1 + 1e-6))[1]
    assert int8.widen(2.0, 5.0)[0] == 0.0  # ranges always hold 0


@pytest.mark.parametrize("value", [96.0, 0.5, 1.0, 127.0, 128.0, 151.061, 3.0 * 2.0 ** -20])
def test_widen_is_immune_to_last_bit_differences_on_and_next_to_grid_points(
    value: float,
) -> None:
    """The review's case: 96.0 is a grid point of 7 significant bits; one float32 step above
    it used to widen to 97.0 while 96.0 stayed 96.0, so two CPUs could build two models."""
    f32 = np.float32(value)
    neighbours = [float(np.nextafter(f32, np.float32(np.inf))),
                  float(np.nextafter(f32, np.float32(0))), float(f32), value]
    assert len({int8.widen(0.0, v)[1] for v in neighbours}) == 1, \
        [int8.widen(0.0, v)[1] for v in neighbours]
    assert len({int8.widen(-v, 1.0)[0] for v in neighbours}) == 1
    assert int8.widen(0.0, value)[1] >= value


VNNI_CPUINFO = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14 96-Core "
                "Processor\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16\n\n"
                "processor\t: 1\n")
AVX2_CPUINFO = ("processor\t: 0\nmodel name\t: AMD EPYC 7763 64-Core Processor\n"
                "flags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\n")
#: A Graviton 3 (Neoverse V1) and a Raspberry Pi 4 (Cortex-A72), as their kernels print them.
GRAVITON3_CPUINFO = ("processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes "
                     "pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
                     "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs "
                     "paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng\nCPU implementer\t: "
                     "0x41\nCPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: 0xd40\n"
                     "CPU revision\t: 1\n\nprocessor\t: 1\n")
PI4_CPUINFO = ("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
               "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: 0xd08\n\n"
               "processor\t: 1\n\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B\n")


def test_cpu_families_from_recorded_cpuinfo_texts() -> None:
    vnni, avx2 = parse_cpuinfo(VNNI_CPUINFO), parse_cpuinfo(AVX2_CPUINFO)
    assert (vnni.family, vnni.vnni) == ("x86-vnni", True)
    assert (avx2.family, avx2.vnni, avx2.model) == ("x86-avx2", False, "AMD EPYC 7763 64-Core "
                                                    "Processor")
    assert "avx2" in avx2.describe() and "x86-avx2" in avx2.describe()
    assert parse_cpuinfo("flags : avx2 avx_vnni\n").family == "x86-vnni"
    assert parse_cpuinfo("flags : amx_tile amx_int8\n").family == "x86-vnni"
    graviton = parse_cpuinfo(GRAVITON3_CPUINFO, "aarch64")
    assert graviton.family == "arm64-dot" and {"asimddp", "i8mm"} <= graviton.flags
    assert graviton.model == "ARM CPU part 0xd40" and graviton.arch == "aarch64"
    pi = parse_cpuinfo(PI4_CPUINFO)  # no machine given: `Features` says ARM
    assert (pi.family, pi.arch) == ("arm64", "aarch64")
    # No /proc/cpuinfo (macOS, Windows, some containers): the architecture alone.
    assert detect_at(Path("/nonexistent/cpuinfo")).flags == frozenset()
    assert CpuInfo("Apple M2", frozenset(), "aarch64").family == "arm64"
    assert CpuInfo("Intel Mac", frozenset(), "x86_64").family == "x86"
    assert CpuInfo("?", frozenset()).family == "unknown"


def detect_at(path: Path) -> CpuInfo:
    from extractor.runtimes.cpu import detect

    return detect(str(path))


def test_the_cpu_family_chooses_the_weight_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(int8.WEIGHTS_ENV, raising=False)
    monkeypatch.delenv(int8.REDUCE_RANGE_ENV, raising=False)
    assert int8.scheme_for(VNNI) is int8.S8
    for cpu in (AVX2, parse_cpuinfo(GRAVITON3_CPUINFO), parse_cpuinfo(PI4_CPUINFO),
                CpuInfo("?", frozenset())):
        assert int8.scheme_for(cpu) is int8.PORTABLE, cpu
    assert int8.S8.needs_vnni and not int8.PORTABLE.needs_vnni
    assert int8.PORTABLE.format_of("block1_conv1") == "fp32"
    assert all(int8.PORTABLE.format_of(layer) in ("s7", "u8", "fp32")
               for layer in int8.CONV_LAYERS)
    # One model for a team of mixed CPUs: portable on every machine, VNNI ones included.
    monkeypatch.setenv(int8.WEIGHTS_ENV, "portable")
    assert int8.scheme_for(VNNI) is int8.PORTABLE
    monkeypatch.setenv(int8.WEIGHTS_ENV, "s8")
    assert int8.scheme_for(VNNI) is int8.S8
    with pytest.raises(int8.Int8Error, match=r"8-bit signed weights.*family x86-avx2.*portable"):
        int8.scheme_for(AVX2)
    monkeypatch.setenv(int8.WEIGHTS_ENV, "bogus")
    with pytest.raises(int8.Int8Error, match="choose auto, s8, portable"):
        int8.scheme_for(VNNI)
    # The previous round's 7-bit switch now means the portable scheme.
    monkeypatch.delenv(int8.WEIGHTS_ENV)
    monkeypatch.setenv(int8.REDUCE_RANGE_ENV, "1")
    assert int8.scheme_for(VNNI) is int8.PORTABLE


def test_8_bit_model_is_refused_on_a_cpu_without_vnni() -> None:
    portable = {"weights": int8.PORTABLE.describe()}
    s8 = {"weights": int8.S8.describe()}
    int8.check_cpu(portable, AVX2)
    int8.check_cpu(portable, VNNI)
    int8.check_cpu(s8, VNNI)
    for cpu in (AVX2, parse_cpuinfo(GRAVITON3_CPUINFO)):
        with pytest.raises(int8.Int8Error, match=r"8-bit signed weights.*saturate"):
            int8.check_cpu(s8, cpu)
    # Models of the previous recipe (q1) say reduce_range instead.
    int8.check_cpu({"reduce_range": True}, AVX2)
    with pytest.raises(int8.Int8Error):
        int8.check_cpu({"reduce_range": False}, AVX2)


def test_calibration_photos_are_the_same_bytes_every_time() -> None:
    first = calibration.photos(64)
    assert first.shape == (64, 64, 64, 3) and first.dtype == np.uint8
    assert calibration.sha256(first) == calibration.sha256(calibration.photos(64))
    assert len({calibration.sha256(p) for p in first}) == 64  # 64 different crops
    assert any((p[..., 0] == p[..., 1]).all() for p in first)  # some grey
    assert float(first.std()) > 30  # real content, not flat


# --------------------------------------------------------------------------- real weights


@pytest.mark.slow
def test_int8_features_are_faithful_to_fp32_on_real_images(
    int8_base: bb.ConvBase, fp32_base: bb.ConvBase, elpv_dir: Path
) -> None:
    files = [f for cls in ("defective", "functional")
             for f in sorted((elpv_dir / "validation" / cls).glob("*.png"))[::11]]
    pixels = np.stack([decode_image(f.read_bytes(), 150) for f in files])
    assert len(pixels) >= 30
    ours, reference = int8_base(pixels), fp32_base(pixels)
    assert sorted(ours) == sorted(reference) == sorted(int8_base.spec.stored_names())
    for name in ours:
        assert ours[name].dtype == np.float32 and ours[name].shape == reference[name].shape
        cos = _cosines(ours[name], reference[name])
        assert cos.min() >= 0.99, (name, cos.min())  # the target, on every image
    spec = int8_base.spec
    assert (spec.precision, spec.runtime) == ("int8", "onnxruntime")
    model = int8.find(int8_base.weights_path, spec.quantized_sha256)
    assert model is not None and isinstance(model.model, Path)
    assert hashlib.sha256(model.model.read_bytes()).hexdigest() == spec.quantized_sha256
    assert spec.differences(fp32_base.spec).keys() == {"precision", "quantized_sha256"}
    # One int8 model serves every layer choice: a block5_pool-only base makes the same maps.
    lone = bb.ConvBase(int8_base.weights_path, precision="int8")
    assert lone.spec.quantized_sha256 == spec.quantized_sha256
    np.testing.assert_allclose(lone(pixels[:3])["block5_pool"], ours["block5_pool"][:3],
                               atol=1e-5)


def _weight_formats(model: bytes) -> dict[str, str]:
    """Each conv layer's weight format, read from a QDQ model's initializers."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in onnx.load_from_string(model).graph.initializer}
    formats = {}
    for layer in int8.CONV_LAYERS:
        q = inits.get(f"{layer}_W_quantized")
        if q is None:
            assert inits[f"{layer}_W"].data_type == onnx.TensorProto.FLOAT
            formats[layer] = "fp32"
            continue
        values = numpy_helper.to_array(q).astype(np.int32)
        if q.data_type == onnx.TensorProto.UINT8:
            formats[layer] = "u8"
        else:
            assert q.data_type == onnx.TensorProto.INT8
            formats[layer] = "s7" if values.min() >= -64 and values.max() <= 64 else "s8"
    return formats


@pytest.mark.slow
def test_each_weight_scheme_quantizes_each_layer_as_it_says(
    int8_base: bb.ConvBase, small_image_dir: Path,
) -> None:
    """The model this CPU uses, and the other family's (built here with a small calibration
    set: it is inspected, not run), have the weight formats their scheme names."""
    mine = int8.find(int8_base.weights_path, int8_base.spec.quantized_sha256)
    assert mine is not None and isinstance(mine.model, Path)
    here = int8.scheme_for()
    assert _weight_formats(mine.model.read_bytes()) == {
        layer: here.format_of(layer) for layer in int8.CONV_LAYERS}
    other = int8.PORTABLE if here is int8.S8 else int8.S8
    calib = int8.CalibrationSet("test", calibration.from_folder(small_image_dir, 150)[:4])
    model = int8.build(int8_base.weights_path, int8_base.spec.weights_sha256, 150, calib, other)
    assert _weight_formats(model) == {layer: other.format_of(layer)
                                      for layer in int8.CONV_LAYERS}
    assert "s8" not in _weight_formats(model).values() or other is int8.S8


@pytest.mark.slow
def test_the_int8_model_is_made_deterministically(
    int8_base: bb.ConvBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built again from scratch in an empty home, with one thread: the same bytes."""
    spec = int8_base.spec
    monkeypatch.setenv(store.HOME_ENV, str(tmp_path / "home"))
    again = int8.prepare(int8_base.weights_path, spec.weights_sha256, 150, threads=1)
    assert again.sha256 == spec.quantized_sha256
    assert isinstance(again.model, Path) and again.model.parent == tmp_path / "home" / "onnx"
    # Asked for by hash with nothing kept: this machine's model hashes the same, so it is used.
    shutil.rmtree(tmp_path / "home")
    assert int8.prepare(int8_base.weights_path, spec.weights_sha256, 150,
                        want_sha256=spec.quantized_sha256).sha256 == spec.quantized_sha256


@pytest.mark.slow
def test_a_missing_int8_model_is_refused_with_the_file_to_copy(
    int8_base: bb.ConvBase,
) -> None:
    spec = int8_base.spec
    with pytest.raises(int8.Int8Error, match=r"quantized_sha256 f{64}.*Copy the file"):
        int8.prepare(int8_base.weights_path, spec.weights_sha256, 150, want_sha256="f" * 64)


def _interrupt_after(base: bb.ConvBase, calls: int) -> Callable[[NDArray[np.uint8]], object]:
    count = 0

    def features(pixels: NDArray[np.uint8]) -> object:
        nonlocal count
        count += 1
        if count > calls:
            raise KeyboardInterrupt
        return base(pixels)

    features.spec = base.spec  # type: ignore[attr-defined]
    return features


@pytest.mark.slow
def test_int8_extraction_resumes_and_never_mixes_precisions(
    int8_base: bb.ConvBase, conv_base: bb.ConvBase, small_image_dir: Path, tmp_path: Path,
    weights_path: Path,
) -> None:
    out = tmp_path / "int8.h5"

    def opts(path: Path, precision: str) -> Options:
        return Options(directory=small_image_dir, out=path, weights=str(weights_path),
                       progress=False, precision=precision, batch_size=4, checkpoint_every=4)

    with pytest.raises(KeyboardInterrupt):
        run(opts(out, "int8"), features_fn=_interrupt_after(int8_base, 2))
    assert not out.exists()
    summary = run(opts(out, "int8"))  # resumes from the checkpoints, with the same model
    assert summary.extracted == 24 - 8 and summary.precision == "int8"
    reference = run(opts(tmp_path / "whole.h5", "int8"), features_fn=int8_base)
    assert reference.extracted == 24
    with open_cache(out) as got, open_cache(tmp_path / "whole.h5") as ref:
        assert got.spec == ref.spec and got.spec.quantized_sha256 == \
            int8_base.spec.quantized_sha256
        assert got.attrs["precision"] == "int8" and "cpu" in got.attrs
        np.testing.assert_allclose(got.read()[0], ref.read()[0], atol=1e-4)

    fp32 = tmp_path / "fp32.h5"
    run(opts(fp32, "fp32"), features_fn=conv_base)
    with pytest.raises(ExtractError, match="precision: cache has 'fp32', this run 'int8'"):
        run(opts(fp32, "int8"))
    with pytest.raises(ExtractError, match="precision: cache has 'int8', this run 'fp32'"):
        run(opts(out, "fp32"))


@pytest.mark.slow
def test_extract_cli_int8(small_image_dir: Path, tmp_path: Path, int8_base: bb.ConvBase,
                          capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    from extractor.cli import main

    monkeypatch.setenv("FEATCACHE_PRECISION", "int8")
    assert main(["--dir", str(small_image_dir), "--out", str(tmp_path / "c.h5"),
                 "--threads", "1"]) == 0
    assert "runtime onnxruntime int8" in capsys.readouterr().out
    with open_cache(tmp_path / "c.h5") as cache:
        assert cache.spec.quantized_sha256 == int8_base.spec.quantized_sha256
    # featcache info says which weight scheme and which CPU made the cache.
    from featcache.info import describe, format_description

    described = describe(tmp_path / "c.h5")
    assert described["int8_weights"] == int8.scheme_for().name
    assert f"int8:       weights {int8.scheme_for().name}, made on" in format_description(
        described)
    assert "family" in described["cpu"]
    with pytest.raises(SystemExit) as info:
        main(["--dir", str(small_image_dir), "--precision", "fp32", "--calibration",
              str(small_image_dir)])
    assert info.value.code == 2
    assert "--calibration applies to --precision int8 only" in capsys.readouterr().err


@pytest.mark.slow
def test_folder_calibration_makes_its_own_model(small_image_dir: Path, tmp_path: Path,
                                                int8_base: bb.ConvBase) -> None:
    pixels = calibration.from_folder(small_image_dir, 150)
    assert pixels.shape == (24, 150, 150, 3)
    spec = bb.make_spec(int8_base.weights_path, "block5_pool", 150, "onnxruntime",
                        precision="int8", calibration=small_image_dir)
    assert spec.quantized_sha256 not in ("", int8_base.spec.quantized_sha256)
    # Found again by hash, without the folder: what extending a cache or serving a head does.
    assert int8.find(int8_base.weights_path, spec.quantized_sha256) is not None
