"""The conv base on ONNX Runtime: the Keras model exported once to ONNX, cached by weights hash.

The export walks the Keras VGG16 layers up to the tapped layer and writes the same graph in ONNX
(Conv + Relu with "same" padding, MaxPool 2x2), taking every kernel and bias from the built
Keras model. It needs no converter package (tf2onnx pins an old protobuf that TensorFlow 2.21
refuses), no network, and works under any Keras backend (TensorFlow, JAX, PyTorch).

Where the export is kept, first that is writable:

1. `$FEATCACHE_HOME/onnx/` when `FEATCACHE_HOME` is set;
2. next to the weights file, unless its folder is read-only (as the shared weights folder is);
3. `$XDG_CACHE_HOME/featcache/onnx/` (default `~/.cache/featcache/onnx/`).

When none is writable the graph is kept in memory for this process only. Files are written to a
temporary name and renamed, so concurrent processes never read half a file; the name holds the
weights' SHA-256, the layer, the input size and the exporter version, so a stale export is never
reused.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

logger = logging.getLogger(__name__)

HOME_ENV = "FEATCACHE_HOME"
#: Bump when the graph the exporter writes could change.
EXPORT_VERSION = "e2"  # e2: one graph output per tapped layer, named after it
OPSET = 17
INPUT_NAME = "pixels"


class ExportError(RuntimeError):
    """The Keras model holds a layer this exporter does not translate."""


def available() -> bool:
    """Whether onnxruntime and onnx import (cheap check; loads neither)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def cpu_threads() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS says so)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def export_name(weights_sha256: str, layers: tuple[str, ...], image_size: int) -> str:
    return f"vgg16-{weights_sha256}-{'+'.join(layers)}-{image_size}-{EXPORT_VERSION}.onnx"


def candidate_dirs(weights_path: Path) -> list[Path]:
    """Where an export may live, in order of preference (see the module docstring)."""
    dirs = []
    home = os.environ.get(HOME_ENV)
    if home:
        dirs.append(Path(home).expanduser() / "onnx")
    else:
        dirs.append(weights_path.resolve().parent)
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        dirs.append(Path(xdg).expanduser() / "featcache" / "onnx")
    return dirs


def find_export(weights_path: Path, name: str) -> Path | None:
    for folder in candidate_dirs(weights_path):
        path = folder / name
        if path.is_file():
            return path
    return None


def _writable_dir(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        mode = folder.stat().st_mode
    except OSError:
        return False
    # os.access says yes to root everywhere; a folder whose owner made it read-only (the shared
    # weights folder) must stay untouched even then.
    return bool(mode & 0o222) and os.access(folder, os.W_OK)


def save_atomic(data: bytes, path: Path) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; others may share this cache
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_model(model: Any) -> bytes:
    """Serialise a Keras VGG16-style conv stack (NHWC float32 in) as an ONNX model.

    The graph has one NHWC output per output of `model`, named after the layer it comes from.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Transpose", [INPUT_NAME], ["x0"], perm=[0, 3, 1, 2])]
    inits = []
    current = "x0"
    wanted = {_layer_of(t) for t in model.outputs}
    outputs = []
    for i, lay in enumerate(model.layers):
        kind = type(lay).__name__
        cfg = lay.get_config()
        if kind == "InputLayer":
            continue
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise ExportError(f"layer {lay.name}: data_format={cfg.get('data_format')!r}")
        out = f"x{i}"
        if kind == "Conv2D":
            kh, kw = cfg["kernel_size"]
            if (
                tuple(cfg["strides"]) != (1, 1)
                or tuple(cfg["dilation_rate"]) != (1, 1)
                or cfg["padding"] != "same"
                or kh % 2 != 1
                or kw % 2 != 1
                or cfg["activation"] not in ("relu", "linear")
                or cfg.get("groups", 1) != 1
            ):
                raise ExportError(f"layer {lay.name}: unsupported Conv2D config {cfg}")
            kernel, bias = (np.asarray(w, dtype=np.float32) for w in lay.get_weights())
            w_name, b_name = f"{lay.name}_W", f"{lay.name}_b"
            # Keras (kh, kw, in, out) -> ONNX (out, in, kh, kw).
            inits.append(numpy_helper.from_array(kernel.transpose(3, 2, 0, 1).copy(), w_name))
            inits.append(numpy_helper.from_array(bias, b_name))
            conv_out = out if cfg["activation"] == "linear" else f"{out}_conv"
            # Stride 1, odd kernel: Keras's "same" padding is symmetric, (k - 1) / 2 each side.
            nodes.append(helper.make_node(
                "Conv", [current, w_name, b_name], [conv_out], name=lay.name,
                kernel_shape=[kh, kw], pads=[kh // 2, kw // 2, kh // 2, kw // 2],
                strides=[1, 1],
            ))
            if cfg["activation"] == "relu":
                nodes.append(helper.make_node("Relu", [conv_out], [out], name=f"{lay.name}_relu"))
        elif kind == "MaxPooling2D":
            if cfg["padding"] != "valid":
                raise ExportError(f"layer {lay.name}: unsupported MaxPooling2D config {cfg}")
            nodes.append(helper.make_node(
                "MaxPool", [current], [out], name=lay.name,
                kernel_shape=list(cfg["pool_size"]), strides=list(cfg["strides"]),
            ))
        else:
            raise ExportError(f"layer {lay.name}: no ONNX translation for {kind}")
        current = out
        if lay.name in wanted:
            nodes.append(helper.make_node("Transpose", [current], [lay.name], perm=[0, 2, 3, 1]))
            shape: list[str | int] = ["N", *(int(d) for d in lay.output.shape[1:])]
            outputs.append(helper.make_tensor_value_info(lay.name, TensorProto.FLOAT, shape))

    in_shape: list[str | int] = ["N", *(int(d) for d in model.input_shape[1:])]
    graph = helper.make_graph(
        nodes, f"{model.name}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, in_shape)],
        outputs,
        initializer=inits,
    )
    proto = helper.make_model(
        graph, producer_name="featcache", opset_imports=[helper.make_opsetid("", OPSET)]
    )
    proto.ir_version = 8  # readable by every onnxruntime since 1.10
    onnx.checker.check_model(proto)
    data: bytes = proto.SerializeToString()
    return data


def _layer_of(tensor: Any) -> str:
    """The name of the Keras layer that produced a model output tensor."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        raise ExportError(f"cannot tell which layer made output {tensor!r}")
    return str(history[0].name)


def load_or_export(
    weights_path: Path, weights_sha256: str, layers: tuple[str, ...], image_size: int
) -> tuple[bytes | Path, str]:
    """The ONNX model for these weights and output layers, exporting (once) if needed; returns
    (model, origin)."""
    name = export_name(weights_sha256, layers, image_size)
    found = find_export(weights_path, name)
    if found is not None:
        return found, str(found)

    from extractor.backbone import build_keras_model

    logger.info("exporting the VGG16 conv base (%s, %s) to ONNX", ", ".join(layers), image_size)
    data = export_model(build_keras_model(weights_path, image_size, layers))
    for folder in candidate_dirs(weights_path):
        if _writable_dir(folder):
            path = folder / name
            try:
                save_atomic(data, path)
            except OSError as exc:
                logger.info("cannot keep the ONNX export in %s (%s)", folder, exc)
                continue
            logger.info("ONNX export kept at %s", path)
            return path, str(path)
    logger.warning("no writable folder for the ONNX export (tried %s); it is kept in memory "
                   "for this process only", ", ".join(map(str, candidate_dirs(weights_path))))
    return data, "memory"


class OnnxConvBase:
    """Runs an exported conv base with ONNX Runtime on the CPU. Float32 NHWC in; a dict of
    layer name -> NHWC maps out, one per graph output."""

    def __init__(self, model: bytes | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.threads = threads or cpu_threads()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        # Spinning workers would steal the cores the decode threads need between batches.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        source = str(model) if isinstance(model, Path) else model
        self.session = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        results = self.session.run(self.outputs, {INPUT_NAME: x})
        return {name: np.asarray(out, dtype=np.float32)
                for name, out in zip(self.outputs, results, strict=True)}
