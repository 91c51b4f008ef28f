"""int8 inference: the fp32 ONNX conv base quantized once, deterministically, kept by its hash.

How the model is made (`build`):

1. The fp32 graph of the whole conv base with the outputs block3_pool, block4_pool and
   block5_pool (`TAPS`), whatever layers a spec stores, so one int8 model serves every layer
   and pooled-layer choice and a head trained on its features finds the same model in `serve`.
2. Calibration: 64 crops of the photographs scikit-learn ships
   (`extractor.runtimes.calibration`; or a folder's images with `extract --calibration DIR`),
   run through the fp32 graph in a fixed order; the min and max of every activation tensor,
   each widened outward by 0.1% and then to 7 significant bits (at most 1.7% wider), so that
   the last-bit differences of fp32 kernels between CPUs cannot change the ranges (`widen`).
3. `onnxruntime.quantization.quantize_static`, QDQ format, per-channel symmetric weights in
   the formats of the weight scheme (below), uint8 activations, the ranges above given as
   `TensorQuantOverrides` (with each layer's weight format; fp32 layers are excluded).

Weights, per conv layer (`WeightScheme`), chosen by the CPU family (`extractor.runtimes.cpu`):

- `s8`, on x86 CPUs with VNNI or AMX: 8-bit signed weights in every layer, the fastest there.
- `portable`, everywhere else (AVX2-only x86 such as Zen 2/3, ARM64, unknown CPUs): there
  onnxruntime sums pairs of u8 x s8 products in 16 bits (VPMADDUBSW), which saturates with 8-bit
  signed weights. The portable scheme uses only formats that cannot saturate on any CPU
  (`PORTABLE` says which, layer by layer, and BENCHMARKS.md "int8 on AVX2" why), so it is also
  the one model a team of mixed CPUs can share: set `FEATCACHE_INT8_WEIGHTS=portable` on every
  machine, VNNI ones included.

A model with `s8` weights is refused on a CPU without VNNI even when found by hash: its features
would not be the ones it made elsewhere.

The file is `vgg16-<weights sha256>-<size>-int8-<recipe key>-<model sha256>.onnx`, beside the
fp32 export (`extractor.runtimes.store`). The recipe key hashes everything the bytes depend on
(weights, input size, calibration images, weight bits, recipe version, onnxruntime and onnx
versions), so
another onnxruntime makes (and keys) its own model; the model's SHA-256 goes into the feature
spec (`quantized_sha256`), so caches, heads and the service never mix two int8 models: a
mismatch is refused with the file to copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from extractor.runtimes import calibration, onnx_export, store
from extractor.runtimes.cpu import CpuInfo, detect

logger = logging.getLogger(__name__)

#: Bump when the way the model is made changes (q2: weight schemes, ranges widened by a margin).
RECIPE_VERSION = "q2"
TAPS = ("block3_pool", "block4_pool", "block5_pool")
WEIGHTS_ENV = "FEATCACHE_INT8_WEIGHTS"
#: The previous round's switch to 7-bit weights everywhere; now read as `portable`.
REDUCE_RANGE_ENV = "FEATCACHE_INT8_REDUCE_RANGE"
METADATA_KEY = "featcache.int8_recipe"
#: Significant bits kept when widening a calibrated range outward.
RANGE_BITS = 7
#: Relative margin added before rounding a range outward (see `widen`).
RANGE_MARGIN = 2.0 ** -10
CALIBRATION_BATCH = 4
#: Models that no folder could keep, by SHA-256: built once per process all the same.
_IN_MEMORY: dict[str, Quantized] = {}

#: Weight formats of a conv layer: 8-bit signed (saturates without VNNI on x86), 7-bit signed
#: (cannot saturate), 8-bit unsigned (U8U8 kernels: cannot saturate, slower on AVX2), or the
#: layer left in fp32 (its input is not quantized either).
FORMATS = ("s8", "s7", "u8", "fp32")
CONV_LAYERS = tuple(name for name, channels in onnx_export.VGG16 if channels)


class Int8Error(RuntimeError):
    """int8 cannot run as asked here: the model that made some features is not available (the
    message says what to copy where), or this CPU would not compute it faithfully."""


@dataclasses.dataclass(frozen=True)
class WeightScheme:
    """The weight format of every conv layer: `default`, except those `layers` names."""

    name: str
    default: str
    layers: tuple[tuple[str, str], ...] = ()

    def format_of(self, layer: str) -> str:
        return dict(self.layers).get(layer, self.default)

    @property
    def needs_vnni(self) -> bool:
        """Whether some layer has 8-bit signed weights (faithful only with VNNI/AMX on x86)."""
        return any(self.format_of(layer) == "s8" for layer in CONV_LAYERS)

    def describe(self) -> dict[str, str]:
        """The formats, for the recipe: the default and each exception."""
        return {"default": self.default, **dict(self.layers)}


S8 = WeightScheme("s8", "s8")
#: Chosen on an AVX2-only Zen 3 (BENCHMARKS.md, "int8 on AVX2"): 8-bit unsigned weights, except
#: the first conv layer in fp32 (raw pixel ranges; 0.6% of the multiply-adds: 7-bit or 8-bit
#: weights there cost the most fidelity) and the three layers whose 7-bit weights cost least
#: fidelity, one layer at a time, in 7-bit signed weights (faster than U8U8 on AVX2; 37% of the
#: multiply-adds). One more 7-bit layer fell below the 0.99 target.
PORTABLE = WeightScheme("portable", "u8", (
    ("block1_conv1", "fp32"),
    ("block1_conv2", "s7"), ("block2_conv2", "s7"), ("block3_conv2", "s7"),
))
SCHEMES = {scheme.name: scheme for scheme in (S8, PORTABLE)}


def scheme_for(cpu: CpuInfo | None = None) -> WeightScheme:
    """The weight scheme for this CPU, or the one `FEATCACHE_INT8_WEIGHTS` names (auto, s8,
    portable). `s8` is refused on a CPU where it would saturate."""
    cpu = cpu or detect()
    setting = os.environ.get(WEIGHTS_ENV, "").strip().lower() or "auto"
    if os.environ.get(REDUCE_RANGE_ENV, "").strip().lower() in ("1", "true", "yes") \
            and setting == "auto":
        logger.warning("%s is replaced by %s=portable (weights that cannot saturate on any "
                       "CPU); using that", REDUCE_RANGE_ENV, WEIGHTS_ENV)
        setting = "portable"
    if setting == "auto":
        return S8 if cpu.family == "x86-vnni" else PORTABLE
    if setting not in SCHEMES:
        raise Int8Error(f"{WEIGHTS_ENV}={setting!r}: choose auto, {', '.join(SCHEMES)}")
    scheme = SCHEMES[setting]
    check_cpu({"weights": scheme.describe()}, cpu)
    return scheme


def _needs_vnni(rec: Mapping[str, Any]) -> bool:
    if "weights" in rec and isinstance(rec["weights"], Mapping):
        return "s8" in rec["weights"].values()
    return not rec.get("reduce_range", False)  # a model of recipe q1


def check_cpu(rec: Mapping[str, Any], cpu: CpuInfo | None = None) -> None:
    """Refuse a model with 8-bit signed weights on a CPU without VNNI (its sums would
    saturate)."""
    cpu = cpu or detect()
    if _needs_vnni(rec) and cpu.family != "x86-vnni":
        raise Int8Error(
            f"this int8 model has 8-bit signed weights, made for x86 CPUs with VNNI or AMX; on "
            f"this one ({cpu.describe()}) its sums saturate and the features would differ from "
            f"those it made elsewhere. Use --precision fp32 here, or make the int8 features "
            f"with {WEIGHTS_ENV}=portable on every machine (one model, faithful on every CPU)."
        )


@dataclasses.dataclass(frozen=True)
class Quantized:
    model: bytes | Path
    sha256: str
    origin: str


@dataclasses.dataclass(frozen=True)
class CalibrationSet:
    """Images to calibrate on, with an identity that enters the recipe key."""

    name: str
    pixels: NDArray[np.uint8]

    @property
    def sha256(self) -> str:
        return calibration.sha256(self.pixels)


def default_calibration(image_size: int) -> CalibrationSet:
    return CalibrationSet(calibration.CALIBRATION_ID, calibration.photos(image_size))


def folder_calibration(directory: Path, image_size: int) -> CalibrationSet:
    return CalibrationSet("folder", calibration.from_folder(directory, image_size))


def recipe(weights_sha256: str, image_size: int, calib: CalibrationSet,
           scheme: WeightScheme) -> dict[str, Any]:
    """Everything the model's bytes depend on."""
    import onnx
    import onnxruntime

    return {
        "recipe": RECIPE_VERSION,
        "weights_sha256": weights_sha256,
        "input_size": image_size,
        "taps": list(TAPS),
        "export": onnx_export.EXPORT_VERSION,
        "format": "QDQ",
        "weight_scheme": scheme.name,
        "weights": scheme.describe(),  # per channel, symmetric; formats as in FORMATS
        "activations": "uint8",
        "ranges": f"min/max, widened by {RANGE_MARGIN:g} then to {RANGE_BITS} significant bits",
        "calibration": calib.name,
        "calibration_images": int(calib.pixels.shape[0]),
        "calibration_sha256": calib.sha256,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
    }


def recipe_key(rec: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:16]


def model_name(weights_sha256: str, image_size: int, key: str, sha256: str) -> str:
    return f"vgg16-{weights_sha256}-{image_size}-int8-{key}-{sha256}.onnx"


def widen(lo: float, hi: float, bits: int = RANGE_BITS,
          margin: float = RANGE_MARGIN) -> tuple[float, float]:
    """[lo, hi] widened outward by a relative `margin`, then rounded outward to `bits`
    significant bits (exact binary arithmetic), and stretched to include 0, as onnxruntime's
    asymmetric quantization does anyway.

    Why the margin: rounding up alone is discontinuous at every grid point, and the values a
    calibration meets exactly (96.0 of an unsigned pixel, 0.5 of a ReLU) sit on grid points, so
    a kernel whose last bit differs moves the range a whole step (96.0 stays 96.0, one float32
    step above gives 97.0). With the margin the discontinuities move to v = g / (1 + margin)
    for grid points g: values no exact computation lands on, and the last bits of a result
    change the range only within 2**-24 of those."""

    def up(v: float) -> float:
        if v <= 0.0:
            return 0.0
        m, e = math.frexp(v * (1.0 + margin))  # v = m * 2**e, 0.5 <= m < 1
        return math.ldexp(math.ceil(m * (1 << bits)) / (1 << bits), e)

    return (-up(-lo) if lo < 0 else 0.0), (up(hi) if hi > 0 else 0.0)


def _tensors(model: Any) -> list[str]:
    """Every float activation tensor of an exported graph: its input and each node's outputs."""
    names = [model.graph.input[0].name]
    for node in model.graph.node:
        names.extend(node.output)
    return names


def calibration_ranges(
    fp32_model: bytes, calib: CalibrationSet, threads: int | None = None
) -> dict[str, tuple[float, float]]:
    """Min and max of every activation tensor over the calibration images, widened outward."""
    import onnx

    from extractor.runtimes.ort import OnnxSession
    from extractor.vgg16 import preprocess

    model = onnx.load_from_string(fp32_model)
    names = _tensors(model)
    graph_outputs = {o.name for o in model.graph.output}
    for name in names:
        if name not in graph_outputs and name != model.graph.input[0].name:
            model.graph.output.append(onnx.helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, None))
    session = OnnxSession(model.SerializeToString(), threads)
    lo = dict.fromkeys(names, math.inf)
    hi = dict.fromkeys(names, -math.inf)
    for start in range(0, len(calib.pixels), CALIBRATION_BATCH):
        x = preprocess(calib.pixels[start : start + CALIBRATION_BATCH])
        maps = session(x)
        maps[names[0]] = x
        for name in names:
            lo[name] = min(lo[name], float(maps[name].min()))
            hi[name] = max(hi[name], float(maps[name].max()))
    return {name: widen(lo[name], hi[name]) for name in names}


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """quantize_static logs advice through the root logger ("consider pre-processing"); it
    concerns models we do not quantize, so it is kept off the user's terminal."""
    root = logging.getLogger()

    def drop(record: logging.LogRecord) -> bool:
        return record.name != "root"

    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def quantize(fp32_model: bytes, ranges: Mapping[str, tuple[float, float]],
             sample: NDArray[np.float32], rec: Mapping[str, Any]) -> bytes:
    """The QDQ int8 model of `fp32_model` with these activation ranges (see the module doc)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class OneBatch(CalibrationDataReader):
        # quantize_static insists on calibrating; every range is overridden, so one batch does.
        def __init__(self) -> None:
            self.items = iter([{onnx_export.INPUT_NAME: sample}])

        def get_next(self) -> dict[str, NDArray[np.float32]] | None:
            return next(self.items, None)

    overrides: dict[str, list[dict[str, Any]]] = {
        name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
        for name, (lo, hi) in ranges.items()}
    formats = dict(rec["weights"])
    default = formats.pop("default")
    excluded = []
    for layer in CONV_LAYERS:
        fmt = formats.get(layer, default)
        if fmt == "fp32":
            excluded.append(layer)
        elif fmt == "s7":
            overrides[f"{layer}_W"] = [{"reduce_range": True}]
        elif fmt == "u8":
            overrides[f"{layer}_W"] = [{"quant_type": QuantType.QUInt8}]
        elif fmt != "s8":
            raise ValueError(f"unknown weight format {fmt!r} for {layer}; choose {FORMATS}")
    with tempfile.TemporaryDirectory(prefix="featcache-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32_model)
        with _quiet_root_logger():
            quantize_static(
                str(src), str(dst), OneBatch(),
                quant_format=QuantFormat.QDQ, per_channel=True,
                reduce_range=False, nodes_to_exclude=excluded,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"TensorQuantOverrides": overrides},
            )
        model = onnx.load(str(dst))
    model.producer_name = "featcache"
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(rec, sort_keys=True)})
    data: bytes = model.SerializeToString()
    return data


def build(weights_path: Path, weights_sha256: str, image_size: int, calib: CalibrationSet,
          scheme: WeightScheme, threads: int | None = None) -> bytes:
    """The int8 model's bytes (seconds to a minute: one calibration pass, then quantization)."""
    from extractor.vgg16 import preprocess

    rec = recipe(weights_sha256, image_size, calib, scheme)
    fp32, _ = onnx_export.load_or_export(weights_path, weights_sha256, TAPS, image_size)
    fp32_bytes = fp32.read_bytes() if isinstance(fp32, Path) else fp32
    ranges = calibration_ranges(fp32_bytes, calib, threads)
    return quantize(fp32_bytes, ranges, preprocess(calib.pixels[:1]), rec)


def _verified(path: Path, sha256: str | None = None) -> Quantized | None:
    """The model at `path` when its bytes hash to `sha256` (the spec's `quantized_sha256`; when
    not given, the hash its name says) and the recipe stored in it is the one its name stands
    for (the recipe key, weights and input size in the name); None otherwise."""
    import onnx

    data = path.read_bytes()
    want = sha256 or path.stem.rsplit("-", 1)[-1]
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        logger.warning("ignoring %s: its SHA-256 is %s, not the %s %s (a damaged or partial "
                       "copy)", path, got, want, "the features record" if sha256 else
                       "its name says")
        return None
    # vgg16-<weights sha256>-<size>-int8-<recipe key>-<model sha256>: `model_name`.
    parts = path.stem.split("-")
    try:
        props = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
        rec = json.loads(props[METADATA_KEY])
        named = (len(parts) == 6 and parts[0] == "vgg16" and parts[3] == "int8"
                 and recipe_key(rec) == parts[4] and rec["weights_sha256"] == parts[1]
                 and str(rec["input_size"]) == parts[2])
    except Exception:  # not ONNX, no recipe, a recipe of another shape
        named = False
    if not named:
        logger.warning("ignoring %s: the recipe stored in it is not the one its name stands for "
                       "(weights, input size, recipe key)", path)
        return None
    return Quantized(path, got, str(path))


def find(weights_path: Path, sha256: str) -> Quantized | None:
    """The int8 model with this SHA-256, if one is kept here."""
    if sha256 in _IN_MEMORY:
        return _IN_MEMORY[sha256]
    for path in store.find(weights_path, f"vgg16-*-int8-*-{sha256}.onnx"):
        found = _verified(path, sha256)
        if found is not None:
            return found
    return None


def prepare(
    weights_path: Path, weights_sha256: str, image_size: int, *, want_sha256: str | None = None,
    calib: CalibrationSet | None = None, threads: int | None = None,
    cpu: CpuInfo | None = None,
) -> Quantized:
    """The int8 model for these weights and input size: found by hash, or built once and kept.

    `want_sha256` asks for the model that made existing features (a cache being extended, a
    head being served): found by its hash where it is kept, else this machine's own model must
    hash the same, or `Int8Error` says which file to copy where.
    """
    if want_sha256:
        found = find(weights_path, want_sha256)
        if found is not None:
            return found
    calib = calib or default_calibration(image_size)
    scheme = scheme_for(cpu)
    key = recipe_key(recipe(weights_sha256, image_size, calib, scheme))
    pattern = model_name(weights_sha256, image_size, key, "*")
    model = next((q for p in store.find(weights_path, pattern) if (q := _verified(p))), None)
    if model is None:
        model = next((q for q in _IN_MEMORY.values() if q.origin == f"memory:{key}"), None)
    if model is None:
        logger.warning("building the int8 model of the VGG16 conv base (%dx%d, weights %s, "
                       "calibration: %s; once per weights, size and onnxruntime version: up to "
                       "a minute) on %s", image_size, image_size, scheme.name,
                       calib.name, (cpu or detect()).describe())
        data = build(weights_path, weights_sha256, image_size, calib, scheme, threads)
        sha = hashlib.sha256(data).hexdigest()
        path = store.keep(data, weights_path, model_name(weights_sha256, image_size, key, sha),
                          "int8 model")
        if path is not None:
            model = Quantized(path, sha, str(path))
        else:
            model = _IN_MEMORY[sha] = Quantized(data, sha, f"memory:{key}")
    if want_sha256 and model.sha256 != want_sha256:
        import onnxruntime

        folders = ", ".join(map(str, store.candidate_dirs(weights_path)))
        raise Int8Error(
            f"the features were made by the int8 model with quantized_sha256 {want_sha256}, "
            f"which is not kept here (looked in {folders}), and this machine's onnxruntime "
            f"{onnxruntime.__version__} makes {model.sha256} instead. Copy the file "
            f"vgg16-*-int8-*-{want_sha256}.onnx from the machine that made the features into "
            f"one of those folders (or set FEATCACHE_HOME to a folder whose onnx/ holds it), "
            f"or make the features again here with --precision int8."
        )
    return model


def scheme_of(weights_path: Path, sha256: str) -> str:
    """The weight scheme of the int8 model with this SHA-256 ("s8", "portable"; "7-bit" or
    "s8" for a model of recipe q1; "unknown" when the model is not kept here)."""
    import onnx

    found = find(weights_path, sha256)
    if found is None:
        return "unknown"
    model = onnx.load_from_string(found.model.read_bytes() if isinstance(found.model, Path)
                                  else found.model)
    rec = model_recipe({p.key: p.value for p in model.metadata_props})
    if "weight_scheme" in rec:
        return str(rec["weight_scheme"])
    return "7-bit" if rec.get("reduce_range") else "s8"


def model_recipe(metadata: Mapping[str, str]) -> dict[str, Any]:
    """The recipe stored in an int8 model's metadata (empty for a model made elsewhere)."""
    text = metadata.get(METADATA_KEY)
    return dict(json.loads(text)) if text else {}
