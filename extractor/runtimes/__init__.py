"""What runs the VGG16 conv base, behind one interface: preprocessed float32 NHWC in, a dict of
layer name -> NHWC maps out (the contract of `extractor.backbone.ConvBase.maps`).

    keras              the reference: Keras 3, any backend                  runtimes/keras.py
    onnxruntime fp32   the ONNX graph built from the weights file (no        runtimes/onnx_export.py
                       TensorFlow), equal to Keras within 1e-3               runtimes/ort.py
    onnxruntime int8   that graph quantized once (QDQ), kept by its hash     runtimes/int8.py
    GPU                onnxruntime's CUDA provider via FEATCACHE_ORT_PROVIDERS, falling back to
                       the CPU (untested: no GPU here)

`ConvBase` (pixels in, named features out) stays the public façade; this package imports no
other part of `extractor` but `images` (preprocessing, for calibration) and `weights`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

logger = logging.getLogger(__name__)

RUNTIMES = ("keras", "onnxruntime")
AUTO = "auto"
PRECISIONS = ("fp32", "int8")


class Runtime(Protocol):
    name: str
    precision: str
    #: SHA-256 of the int8 model; empty for fp32.
    quantized_sha256: str
    #: What was loaded (a file, "memory", the weights file).
    origin: str

    def __call__(self, x: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]: ...


def onnx_available() -> bool:
    from extractor.runtimes.onnx_export import available

    return available()


def resolve(runtime: str = AUTO, precision: str = "fp32") -> str:
    """`auto` -> the fastest installed runtime for `precision`; a named one is checked."""
    if runtime not in (AUTO, *RUNTIMES):
        raise ValueError(
            f"unknown runtime {runtime!r}; choose one of {', '.join((AUTO, *RUNTIMES))}"
        )
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and runtime == "keras":
        raise ValueError("--precision int8 runs on onnxruntime only; use --runtime onnxruntime "
                         "or auto")
    if runtime in ("onnxruntime", AUTO) and precision == "int8" and not onnx_available():
        raise ValueError("--precision int8 needs the onnxruntime and onnx packages "
                         "(pip install onnxruntime onnx)")
    if runtime == "onnxruntime" and not onnx_available():
        raise ValueError("runtime 'onnxruntime' needs the onnxruntime and onnx packages "
                         "(pip install onnxruntime onnx)")
    if runtime != AUTO:
        return runtime
    if onnx_available():
        return "onnxruntime"
    logger.info("runtime auto: using keras (onnxruntime, the faster, is not installed: "
                "pip install onnxruntime onnx)")
    return "keras"


class OnnxRuntime:
    """fp32 or int8 on ONNX Runtime."""

    name = "onnxruntime"

    def __init__(self, model: bytes | Path, origin: str, layers: tuple[str, ...],
                 threads: int | None, precision: str = "fp32",
                 quantized_sha256: str = "") -> None:
        from extractor.runtimes.ort import OnnxSession

        self.session = OnnxSession(model, threads, outputs=layers)
        self.precision = precision
        self.quantized_sha256 = quantized_sha256
        self.origin = origin
        if precision == "int8":
            from extractor.runtimes import int8

            meta = self.session.session.get_modelmeta().custom_metadata_map
            int8.check_cpu(int8.model_recipe(meta))

    def __call__(self, x: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        return self.session(x)


def load(
    runtime: str, weights_path: Path, weights_sha256: str, layers: tuple[str, ...],
    image_size: int, *, precision: str = "fp32", threads: int | None = None,
    quantized_sha256: str | None = None, calibration: Path | None = None,
) -> Runtime:
    """Build the runtime `runtime` (as `resolve` returns it) for these weights and layers.

    int8: `quantized_sha256` asks for the model that made existing features; `calibration`
    calibrates a new model on that folder's images instead of the bundled photos.
    """
    if runtime == "keras":
        from extractor.runtimes.keras import KerasRuntime

        if precision != "fp32":
            raise ValueError("--precision int8 runs on onnxruntime only")
        return KerasRuntime(weights_path, layers, image_size)
    if precision == "int8":
        from extractor.runtimes import int8

        calib = int8.folder_calibration(calibration, image_size) if calibration else None
        q = int8.prepare(weights_path, weights_sha256, image_size,
                         want_sha256=quantized_sha256 or None, calib=calib, threads=threads)
        return OnnxRuntime(q.model, q.origin, layers, threads, "int8", q.sha256)
    from extractor.runtimes.onnx_export import load_or_export

    model, origin = load_or_export(weights_path, weights_sha256, layers, image_size)
    return OnnxRuntime(model, origin, layers, threads)
