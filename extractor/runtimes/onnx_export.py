"""The VGG16 conv base as an ONNX graph, built straight from the Keras weights file with h5py.

Why not the library exporter (Keras's `model.export(format="onnx")`, which runs tf2onnx 1.17):
measured side by side (BENCHMARKS.md, "ONNX export"), it gives the same graph outputs to the
last bit and the same inference speed, but needs TensorFlow, which the lean serving image must
not carry (it exports on first start from a mounted weights file), and took 54 s (TensorFlow
import, model build, conversion) against 2.4 s here, names its outputs `Identity:0`... rather
than after the layers, and needs a model built and called per set of outputs. VGG16's conv base
is 13 Conv + ReLU (3x3, stride 1, "same" padding) and 5 MaxPool (2x2, stride 2) in a fixed
order; writing that graph from the kernels takes a few lines and no converter. Its features
equal Keras's within 1e-3 on real images (tests/extractor/test_runtime.py, which also runs it
with TensorFlow and Keras blocked from importing).

Input: `pixels`, (N, size, size, 3) float32 NHWC, preprocessed as `extractor.vgg16.preprocess`
does. Outputs: one NHWC tensor per tapped pooling layer, named after it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from extractor.runtimes import store

logger = logging.getLogger(__name__)

#: Bump when the graph written could change.
EXPORT_VERSION = "e3"  # e3: built from the weights file (h5py), not from a Keras model
OPSET = 17
INPUT_NAME = "pixels"
#: The metadata entry that records what an export was made from (`record`).
RECORD_KEY = "featcache.export"

#: VGG16's conv base, in order: (layer, output channels) for Conv2D 3x3 + ReLU, (layer, 0) for
#: MaxPooling2D 2x2.
VGG16 = (
    ("block1_conv1", 64), ("block1_conv2", 64), ("block1_pool", 0),
    ("block2_conv1", 128), ("block2_conv2", 128), ("block2_pool", 0),
    ("block3_conv1", 256), ("block3_conv2", 256), ("block3_conv3", 256), ("block3_pool", 0),
    ("block4_conv1", 512), ("block4_conv2", 512), ("block4_conv3", 512), ("block4_pool", 0),
    ("block5_conv1", 512), ("block5_conv2", 512), ("block5_conv3", 512), ("block5_pool", 0),
)
_ORDER = {name: i for i, (name, _) in enumerate(VGG16)}


class ExportError(RuntimeError):
    """The weights file does not hold a VGG16 conv base this exporter can read."""


def available() -> bool:
    """Whether onnxruntime and onnx import (cheap check; loads neither)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def export_name(weights_sha256: str, layers: tuple[str, ...], image_size: int) -> str:
    """The export's file name. The outputs are named after their layers, so their order does
    not change the graph: sorted, every order shares one file."""
    tapped = "+".join(sorted(set(layers)))
    return f"vgg16-{weights_sha256}-{tapped}-{image_size}-{EXPORT_VERSION}.onnx"


def _groups(f: object) -> Iterator[tuple[str, object]]:
    import h5py

    assert isinstance(f, h5py.Group)
    if "model_weights" in f:  # a whole model saved by Keras 2 (model.save("x.h5"))
        f = f["model_weights"]
        assert isinstance(f, h5py.Group)
    if "layers" in f and isinstance(f["layers"], h5py.Group):  # Keras 3 .weights.h5
        for name, group in f["layers"].items():
            yield name, group
        return
    for name, group in f.items():  # Keras 2 weights file (what Keras downloads for imagenet)
        yield name, group


def _arrays(group: object) -> list[NDArray[np.float32]]:
    """A layer group's weight arrays in Keras order (kernel, bias)."""
    import h5py

    assert isinstance(group, h5py.Group)
    names = [n.decode() if isinstance(n, bytes) else str(n)
             for n in group.attrs.get("weight_names", [])]
    if names:
        return [np.asarray(group[n], dtype=np.float32) for n in names]
    if "vars" in group:  # Keras 3: vars/0 (kernel), vars/1 (bias)
        vars_ = group["vars"]
        assert isinstance(vars_, h5py.Group)
        return [np.asarray(vars_[k], dtype=np.float32) for k in sorted(vars_, key=int)]
    return []


def read_kernels(weights_path: Path) -> dict[str, tuple[NDArray[np.float32], NDArray[np.float32]]]:
    """Conv layer -> (kernel (3, 3, in, out), bias (out,)) from a Keras VGG16 weights file."""
    import h5py

    try:
        f = h5py.File(weights_path, "r")
    except OSError as exc:
        raise ExportError(f"cannot read {weights_path} as a Keras HDF5 weights file: {exc}") \
            from None
    with f:
        found = {name: _arrays(group) for name, group in _groups(f) if name in _ORDER}
    out = {}
    in_channels = 3
    for name, channels in VGG16:
        if not channels:
            continue
        arrays = found.get(name)
        expected = (3, 3, in_channels, channels)
        if not arrays or len(arrays) != 2 or arrays[0].shape != expected \
                or arrays[1].shape != (channels,):
            shapes = [a.shape for a in arrays or []]
            raise ExportError(
                f"{weights_path} is not a VGG16 no-top weights file: layer {name!r} should hold "
                f"a kernel {expected} and a bias ({channels},); found {shapes or 'nothing'}"
            )
        out[name] = (arrays[0], arrays[1])
        in_channels = channels
    return out


def record(weights_sha256: str, layers: tuple[str, ...], image_size: int) -> dict[str, Any]:
    """What an export is made from, stored in its metadata (`RECORD_KEY`) and checked on load."""
    return {"export": EXPORT_VERSION, "opset": OPSET, "weights_sha256": weights_sha256,
            "layers": list(layers), "image_size": image_size}


def _graph(layers: tuple[str, ...], image_size: int) -> tuple[list[Any], list[Any], Any,
                                                              list[Any]]:
    """The conv base's nodes up to the deepest of `layers`, its convolutions as (layer, kernel
    initializer name, bias initializer name), its input, and one output per layer in `layers`."""
    from onnx import TensorProto, helper

    unknown = [name for name in layers if name not in _ORDER or not name.endswith("_pool")]
    if unknown or not layers:
        raise ExportError(f"cannot tap layers {unknown or layers}; choose pooling layers of VGG16")
    last = max(_ORDER[name] for name in layers)
    nodes = [helper.make_node("Transpose", [INPUT_NAME], ["x0"], perm=[0, 3, 1, 2])]
    convs = []
    current, side, channels = "x0", image_size, 3
    outputs: dict[str, Any] = {}
    for i, (name, out_channels) in enumerate(VGG16[: last + 1], start=1):
        out = f"x{i}"
        if out_channels:
            w_name, b_name = f"{name}_W", f"{name}_b"
            convs.append((name, w_name, b_name))
            # Stride 1, 3x3: Keras's "same" padding is one pixel each side.
            nodes.append(helper.make_node(
                "Conv", [current, w_name, b_name], [f"{out}_conv"], name=name,
                kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1],
            ))
            nodes.append(helper.make_node("Relu", [f"{out}_conv"], [out], name=f"{name}_relu"))
            channels = out_channels
        else:
            nodes.append(helper.make_node("MaxPool", [current], [out], name=name,
                                          kernel_shape=[2, 2], strides=[2, 2]))
            side //= 2
        current = out
        if name in layers:
            nodes.append(helper.make_node("Transpose", [current], [name], perm=[0, 2, 3, 1]))
            outputs[name] = helper.make_tensor_value_info(
                name, TensorProto.FLOAT, ["N", side, side, channels])
    pixels = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                           ["N", image_size, image_size, 3])
    return nodes, convs, pixels, [outputs[name] for name in layers]


def _initial_values(
    kernels: dict[str, tuple[NDArray[np.float32], NDArray[np.float32]]],
    convs: list[tuple[str, str, str]],
) -> Iterator[tuple[str, NDArray[np.float32]]]:
    """(initializer name, value) of every kernel and bias, in the graph's order."""
    for layer, w_name, b_name in convs:
        kernel, bias = kernels[layer]
        # Keras (kh, kw, in, out) -> ONNX (out, in, kh, kw).
        yield w_name, kernel.transpose(3, 2, 0, 1)
        yield b_name, bias


def build(weights_path: Path, layers: tuple[str, ...], image_size: int,
          made_from: dict[str, Any] | None = None) -> bytes:
    """The ONNX model (serialised) of the conv base up to the deepest of `layers`, with one
    output per layer in `layers`, in that order; `made_from` (`record`) goes into its
    metadata."""
    import onnx
    from onnx import helper, numpy_helper

    nodes, convs, pixels, outputs = _graph(layers, image_size)
    kernels = read_kernels(weights_path)
    inits = [numpy_helper.from_array(np.ascontiguousarray(value), name)
             for name, value in _initial_values(kernels, convs)]
    graph = helper.make_graph(nodes, "vgg16_" + "_".join(layers), [pixels], outputs,
                              initializer=inits)
    proto = helper.make_model(
        graph, producer_name="featcache", opset_imports=[helper.make_opsetid("", OPSET)]
    )
    proto.ir_version = 8  # readable by every onnxruntime since 1.10
    if made_from is not None:
        helper.set_model_props(proto, {RECORD_KEY: json.dumps(made_from, sort_keys=True)})
    onnx.checker.check_model(proto)
    data: bytes = proto.SerializeToString()
    return data


def verify(data: bytes, weights_path: Path, weights_sha256: str, layers: tuple[str, ...],
           image_size: int) -> str | None:
    """Why the serialised model `data` is not the export of these weights, layers and size
    (None when it is): its record, its graph node by node, and every kernel and bias against
    the weights file. A file found on disk is used only after this: its name proves nothing."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        return f"not an ONNX model ({exc.__class__.__name__})"
    props = {p.key: p.value for p in model.metadata_props}
    try:
        made_from = json.loads(props.get(RECORD_KEY, "null"))
    except ValueError:
        made_from = None
    if made_from != record(weights_sha256, layers, image_size):
        return f"its record ({RECORD_KEY}) is not this export's: {made_from}"
    nodes, convs, pixels, outputs = _graph(layers, image_size)
    graph = model.graph
    if (list(graph.node) != nodes or list(graph.input) != [pixels]
            or list(graph.output) != outputs):
        return "its graph is not VGG16's conv base as featcache writes it"
    values = dict(_initial_values(read_kernels(weights_path), convs))
    stored = {t.name: t for t in graph.initializer}
    if set(stored) != set(values):
        return "its initializers are not the conv base's kernels and biases"
    for name, value in values.items():
        if not np.array_equal(numpy_helper.to_array(stored[name]), value):
            return f"its {name} is not the weights file's"
    return None


def load_or_export(
    weights_path: Path, weights_sha256: str, layers: tuple[str, ...], image_size: int
) -> tuple[bytes, str]:
    """The ONNX model for these weights and output layers, exporting (once) if needed; returns
    (model bytes, origin). A kept export is used only once `verify` passes on the very bytes
    returned. The graph's outputs come in layer order whatever the order asked: one file, and
    the same bytes, for every order."""
    layers = tuple(sorted(set(layers)))
    name = export_name(weights_sha256, layers, image_size)
    found = next(store.find(weights_path, name), None)
    if found is not None:
        data = found.read_bytes()
        problem = verify(data, weights_path, weights_sha256, layers, image_size)
        if problem is None:
            return data, str(found)
        logger.warning("ignoring %s: %s; exporting it again", found, problem)
    logger.info("exporting the VGG16 conv base (%s, %s) to ONNX", ", ".join(layers), image_size)
    data = build(weights_path, layers, image_size, record(weights_sha256, layers, image_size))
    path = store.keep(data, weights_path, name, "ONNX export")
    return data, str(path) if path is not None else "memory"
