"""The Open Inference Protocol (KServe V2) over HTTP: parsing requests and writing responses.

Every head is a model of the same shape:

    input   IMAGE          BYTES  [-1]      encoded images (PNG, JPEG, ...), one per element
    output  PROBABILITIES  FP32   [-1, C]   class probabilities, columns in the head's class order
    output  LABEL          BYTES  [-1]      the most probable class name of each image ("" where
                                            the head abstained)
    output  OOD_SCORE      FP32   [-1]      heads with an out-of-distribution guard, on request:
    output  IN_DISTRIBUTION BOOL  [-1]      the guard's score (1.0 is the threshold), its verdict

A request sends IMAGE as [N] (or [N, 1]) either in the JSON body, each element a base64 string,
or with Triton's binary tensor data extension: the JSON header first (its length in the
`Inference-Header-Content-Length` header), then the tensor bytes, each element a 4-byte
little-endian length and the bytes, the input carrying `"parameters": {"binary_data_size": n}`.
Outputs come back in JSON unless the request asks for binary (`"binary_data": true` on a
requested output, or `"binary_data_output": true` in the request's parameters), in which case
they follow the JSON header in the same layout. The classification extension
(`"classification": k` on PROBABILITIES) returns the top k of each row as "value:index:label".

Nothing here knows about FastAPI or the model: the route hands bytes in and gets bytes out.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import struct
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.errors import InvalidRequestError, TooManyFilesError, UploadTooLargeError

INPUT = "IMAGE"
PROBABILITIES = "PROBABILITIES"
LABEL = "LABEL"
OUTPUTS = (PROBABILITIES, LABEL)
OOD_SCORE = "OOD_SCORE"
IN_DISTRIBUTION = "IN_DISTRIBUTION"
#: Outputs sent only when requested by name (heads with an out-of-distribution guard).
GUARD_OUTPUTS = (OOD_SCORE, IN_DISTRIBUTION)
EXTENSIONS = ("binary_tensor_data", "classification")
HEADER_LENGTH = "Inference-Header-Content-Length"

#: Parameters that ask for shared memory, which an HTTP server on another machine cannot read.
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
#: Bytes inflated at a time from a compressed body, each counted before the next is made.
_INFLATE_PIECE = 1 << 20


class ProtocolError(InvalidRequestError):
    """A request the protocol does not allow, or this model cannot take (400 under /v2)."""

    code = "invalid_request"


@dataclasses.dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0


@dataclasses.dataclass(frozen=True)
class InferRequest:
    id: str | None
    images: list[bytes]
    outputs: list[RequestedOutput]


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": "featcache", "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(name: str, versions: Sequence[str], platform: str,
                   classes: Sequence[str], parameters: dict[str, Any],
                   guard: bool = False) -> dict[str, Any]:
    """The model metadata response: tensors by name, datatype and shape, and the classes
    (with `guard`, the out-of-distribution outputs too)."""
    extra = [{"name": OOD_SCORE, "datatype": "FP32", "shape": [-1]},
             {"name": IN_DISTRIBUTION, "datatype": "BOOL", "shape": [-1]}] if guard else []
    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(classes)],
             "parameters": {"classes": list(classes)}},
            {"name": LABEL, "datatype": "BYTES", "shape": [-1]},
            *extra,
        ],
        "parameters": {"classes": list(classes), **parameters},
    }


def decompress(body: bytes, encoding: str | None, limit: int,
               reserve: Callable[[int], None] = lambda n: None) -> bytes:
    """The request body without its Content-Encoding (gzip or deflate), at most `limit` bytes.

    Inflated in pieces, each passed to `reserve` before the next is made: the caller counts
    them against the memory its requests may hold (a small gzip body can inflate to `limit`).
    """
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.strip().lower())
    if wbits is None:
        raise ProtocolError(f"unsupported Content-Encoding {encoding[:40]!r}; send gzip, deflate "
                            "or none")
    inflater = zlib.decompressobj(wbits)
    pieces: list[bytes] = []
    size = 0
    pending = body
    try:
        while True:
            piece = inflater.decompress(pending, _INFLATE_PIECE)
            pending = inflater.unconsumed_tail
            size += len(piece)
            if size > limit:
                raise UploadTooLargeError(f"request body too large once decompressed: the limit "
                                          f"is {limit} bytes")
            reserve(len(piece))
            pieces.append(piece)
            # A full piece may leave output inside zlib even when all input is taken.
            if inflater.eof or (not pending and len(piece) < _INFLATE_PIECE):
                break
    except zlib.error:
        raise ProtocolError(f"the body is not valid {encoding} data") from None
    return b"".join(pieces)


def parse_infer_request(body: bytes, header_length: str | None, *, max_images: int,
                        max_image_bytes: int) -> InferRequest:
    """Check and unpack an inference request; every problem is a ProtocolError naming it.

    Counts and sizes are checked from the shape and each element's length before anything is
    copied: a body of millions of empty elements is refused at the first one past the shape.
    It still costs CPU in proportion to the body: the route parses large ones off the event
    loop.
    """
    json_part, binary = _split(body, header_length)
    try:
        request = json.loads(json_part)
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("the inference request is not valid JSON") from None
    except RecursionError:  # the C decoder recurses once per nested array or object
        raise ProtocolError("the inference request nests JSON arrays or objects too deeply") \
            from None
    if not isinstance(request, dict):
        raise ProtocolError("the inference request must be a JSON object")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"'id' must be a string; got {request_id!r}")
    parameters = _object(request.get("parameters"), "parameters")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError(f"'inputs' must be a list holding the {INPUT} tensor")
    names = [i.get("name") if isinstance(i, dict) else None for i in inputs]
    if names != [INPUT]:
        raise ProtocolError(f"this model takes one input, {INPUT} (BYTES, one encoded image per "
                            f"element); got inputs {names}")
    images = _read_input(inputs[0], binary, max_images=max_images,
                         max_image_bytes=max_image_bytes)
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ProtocolError(f"parameter 'binary_data_output' must be true or false; got "
                            f"{binary_default!r}")
    return InferRequest(request_id, images, _requested_outputs(request.get("outputs"),
                                                               binary_default))


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header (a copy: small) and a view of the binary data after it (no copy)."""
    view = memoryview(body)
    if header_length is None:
        return body, view[len(body):]
    # int() also takes "1_0", "+10", " 10 " and non-ASCII digits: plain ASCII digits only.
    digits = header_length.isascii() and header_length.isdigit()
    n = int(header_length) if digits and len(header_length) <= 20 else -1
    if not 0 <= n <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} must be the length of the JSON header in plain "
                            f"digits, between 0 and the body's {len(body)} bytes; got "
                            f"{header_length[:40]!r}")
    return bytes(view[:n]), view[n:]


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"'{what}' must be a JSON object; got {type(value).__name__}")
    return value


def _read_input(tensor: dict[str, Any], binary: memoryview, *, max_images: int,
                max_image_bytes: int) -> list[bytes]:
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if datatype != "BYTES":
        raise ProtocolError(f"{INPUT} must have datatype BYTES; got {datatype!r}")
    if (not isinstance(shape, list) or not shape or len(shape) > 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or (len(shape) == 2 and shape[1] != 1)):
        raise ProtocolError(f"{INPUT} must have shape [N] or [N, 1] (one image per element); "
                            f"got {shape!r}")
    count = shape[0]
    if count == 0:
        raise ProtocolError(f"{INPUT} holds no image (shape {shape})")
    if count > max_images:
        raise TooManyFilesError(f"too many images: {count}, the limit is {max_images} per "
                                "request")
    parameters = _object(tensor.get("parameters"), f"{INPUT}.parameters")
    if any(k in parameters for k in _SHARED_MEMORY):
        raise ProtocolError("shared memory is not supported: send the tensor in the body")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in tensor:
            raise ProtocolError(f"{INPUT} has both 'data' and binary_data_size; send one")
        if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
            raise ProtocolError(f"{INPUT}'s binary_data_size ({size!r}) must be the length of the "
                                f"binary data after the JSON header ({len(binary)} bytes)")
        images = deserialize_bytes(binary, max_count=count, max_element_bytes=max_image_bytes)
    else:
        if binary:
            raise ProtocolError(f"{len(binary)} bytes follow the JSON header but no input has "
                                "binary_data_size")
        images = _base64_elements(tensor.get("data"), count, max_image_bytes)
    if len(images) != count:
        raise ProtocolError(f"{INPUT} has shape {shape} but holds {len(images)} elements")
    return images


def _too_many(count: int) -> ProtocolError:
    return ProtocolError(f"{INPUT} holds more elements than its shape's {count}")


def _too_large(i: int, size: int, limit: int) -> UploadTooLargeError:
    return UploadTooLargeError(f"{INPUT}[{i}] is too large: {size} bytes, the limit is {limit}")


def _base64_elements(data: Any, count: int, max_image_bytes: int) -> list[bytes]:
    if not isinstance(data, list):
        raise ProtocolError(f"{INPUT} needs 'data' (a list of base64 strings) or binary data "
                            "(binary_data_size)")
    flat: list[Any] = []
    stack = [data]
    while stack:  # row-major: nested lists are flattened in order
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif len(flat) == count:
            raise _too_many(count)
        else:
            flat.append(item)
    # Base64 carries 3 bytes in 4 characters (padded): longer text decodes to too many bytes.
    max_chars = 4 * -(-max_image_bytes // 3)
    out = []
    for i, element in enumerate(flat):
        if not isinstance(element, str):
            raise ProtocolError(f"{INPUT}[{i}] must be a base64 string; got "
                                f"{type(element).__name__}")
        if len(element) > max_chars:
            raise _too_large(i, len(element) // 4 * 3, max_image_bytes)
        try:
            decoded = base64.b64decode(element, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(f"{INPUT}[{i}] is not valid base64 (JSON carries BYTES elements "
                                "as base64; or send binary data)") from None
        if len(decoded) > max_image_bytes:
            raise _too_large(i, len(decoded), max_image_bytes)
        out.append(decoded)
    return out


def _requested_outputs(outputs: Any, binary_default: bool) -> list[RequestedOutput]:
    if outputs is None:
        return [RequestedOutput(name, binary_default) for name in OUTPUTS]
    if not isinstance(outputs, list):
        raise ProtocolError("'outputs' must be a list")
    out: list[RequestedOutput] = []
    for item in outputs:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in OUTPUTS and name not in GUARD_OUTPUTS:
            raise ProtocolError(f"unknown output {name!r}; this model has outputs "
                                f"{', '.join(OUTPUTS)} (and {', '.join(GUARD_OUTPUTS)} for "
                                "heads with an out-of-distribution guard)")
        if any(o.name == name for o in out):  # each copy would be built and sent again
            raise ProtocolError(f"output {name!r} is requested more than once")
        parameters = _object(item.get("parameters"), f"{name}.parameters")
        if any(k in parameters for k in _SHARED_MEMORY):
            raise ProtocolError("shared memory is not supported: outputs come in the body")
        binary = parameters.get("binary_data", binary_default)
        k = parameters.get("classification", 0)
        if not isinstance(binary, bool):
            raise ProtocolError(f"{name}'s binary_data must be true or false; got {binary!r}")
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ProtocolError(f"{name}'s classification must be a count >= 0; got {k!r}")
        if k and name != PROBABILITIES:
            raise ProtocolError(f"classification applies to {PROBABILITIES}, not {name}")
        out.append(RequestedOutput(name, binary, k))
    return out


def serialize_bytes(elements: Sequence[bytes]) -> bytes:
    """BYTES tensor data: each element as a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def deserialize_bytes(data: bytes | memoryview, max_count: int | None = None,
                      max_element_bytes: int | None = None) -> list[bytes]:
    """The elements of BYTES tensor data. Each length is checked before its bytes are copied,
    and reading stops at the first element past `max_count` (ProtocolError) or over
    `max_element_bytes` (UploadTooLargeError)."""
    out: list[bytes] = []
    offset = 0
    while offset < len(data):
        if max_count is not None and len(out) == max_count:
            raise _too_many(max_count)
        if offset + 4 > len(data):
            raise ProtocolError("the binary BYTES data ends inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if max_element_bytes is not None and n > max_element_bytes:
            raise _too_large(len(out), n, max_element_bytes)
        if offset + n > len(data):
            raise ProtocolError(f"a binary BYTES element claims {n} bytes but only "
                                f"{len(data) - offset} remain")
        out.append(bytes(data[offset:offset + n]))
        offset += n
    return out


def infer_response(
    request: InferRequest, model_name: str, model_version: str | None,
    probabilities: NDArray[np.float32], classes: Sequence[str], labels: Sequence[str],
    ood_scores: Sequence[float] | None = None, in_distribution: Sequence[bool] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers for one request's (N, C) probabilities and labels
    (and the guard's scores and verdicts, when it asks for them)."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for wanted in request.outputs:
        if wanted.name == PROBABILITIES and wanted.classification:
            k = min(wanted.classification, len(classes))
            order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
            tensor: dict[str, Any] = {"name": wanted.name, "datatype": "BYTES",
                                      "shape": [len(probabilities), k]}
            values: list[str] = [f"{probabilities[r, c]:f}:{c}:{classes[c]}"
                                 for r in range(len(probabilities)) for c in order[r]]
            data: Any = values
            raw = serialize_bytes([v.encode() for v in values])
        elif wanted.name == PROBABILITIES:
            tensor = {"name": wanted.name, "datatype": "FP32", "shape": list(probabilities.shape)}
            array = np.ascontiguousarray(probabilities, dtype="<f4")
            data = [_finite(float(v)) for v in array.ravel()]
            raw = array.tobytes()
        elif wanted.name == OOD_SCORE:
            scores = np.ascontiguousarray(ood_scores or [], dtype="<f4")
            tensor = {"name": wanted.name, "datatype": "FP32", "shape": [len(scores)]}
            data = [_finite(float(v)) for v in scores]
            raw = scores.tobytes()
        elif wanted.name == IN_DISTRIBUTION:
            flags = np.asarray(in_distribution or [], dtype=bool)
            tensor = {"name": wanted.name, "datatype": "BOOL", "shape": [len(flags)]}
            data = [bool(v) for v in flags]
            raw = flags.astype(np.uint8).tobytes()
        else:
            tensor = {"name": wanted.name, "datatype": "BYTES", "shape": [len(labels)]}
            data = labels
            raw = serialize_bytes([label.encode() for label in labels])
        if wanted.binary:
            tensor["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            tensor["data"] = data
        outputs.append(tensor)
    response: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        response["model_version"] = model_version
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = outputs
    header = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(blobs), {"Content-Type": "application/octet-stream",
                                      HEADER_LENGTH: str(len(header))}


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"a probability is not finite: {value}")
    return value
