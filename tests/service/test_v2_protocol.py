"""The V2 protocol module alone: what tritonclient sends parses, what we answer it reads."""

from __future__ import annotations

import base64
import gzip
import json
import zlib

import numpy as np
import pytest
import tritonclient.http as httpclient

from service import v2_protocol as v2
from service.errors import TooManyFilesError, UploadTooLargeError

IMAGES = [b"\x89PNG first\x00\xff", b"", b"second \x00 image"]
LIMITS = {"max_images": 8, "max_image_bytes": 1000}


def client_request(images: list[bytes], binary: bool = True,
                   outputs: list[httpclient.InferRequestedOutput] | None = None,
                   **kw: object) -> tuple[bytes, str | None]:
    """The body and Inference-Header-Content-Length tritonclient itself would send."""
    tensor = httpclient.InferInput("IMAGE", [len(images)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    else:  # JSON carries BYTES as text: images go base64-encoded
        encoded = [base64.b64encode(i) for i in images]
        tensor.set_data_from_numpy(np.array(encoded, dtype=np.object_), binary_data=False)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        [tensor], outputs=outputs, **kw)
    return body, None if json_size is None else str(json_size)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json-base64"])
def test_client_requests_parse(binary: bool) -> None:
    body, header = client_request(IMAGES, binary=binary, request_id="r-1")
    assert (header is not None) == binary
    request = v2.parse_infer_request(body, header, **LIMITS)
    assert request.images == IMAGES
    assert request.id == "r-1"
    # No outputs named: tritonclient asks for every output in binary.
    assert request.outputs == [v2.RequestedOutput("PROBABILITIES", True),
                               v2.RequestedOutput("LABEL", True)]


def test_bytes_tensor_layout() -> None:
    data = v2.serialize_bytes([b"ab", b"", b"c"])
    assert data == b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x01\x00\x00\x00c"
    assert v2.deserialize_bytes(data) == [b"ab", b"", b"c"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_responses_read_back_with_the_client(binary: bool) -> None:
    outputs = [httpclient.InferRequestedOutput("PROBABILITIES", binary_data=binary),
               httpclient.InferRequestedOutput("LABEL", binary_data=binary)]
    body, header = client_request(IMAGES[:2], outputs=outputs)
    request = v2.parse_infer_request(body, header, **LIMITS)
    probabilities = np.array([[0.25, 0.75], [0.9, 0.1]], dtype=np.float32)
    content, headers = v2.infer_response(request, "elpv", "3", probabilities,
                                         ["defective", "functional"], ["functional", "defective"])
    assert (v2.HEADER_LENGTH in headers) == binary
    result = httpclient.InferenceServerClient.parse_response_body(
        content, header_length=headers.get(v2.HEADER_LENGTH))
    got = result.as_numpy("PROBABILITIES")
    assert got.dtype == np.float32 and got.shape == (2, 2)
    np.testing.assert_array_equal(got, probabilities)
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("LABEL")]
    assert labels == ["functional", "defective"]
    response = result.get_response()
    assert response["model_name"] == "elpv" and response["model_version"] == "3"


def test_only_requested_outputs_and_classification() -> None:
    outputs = [httpclient.InferRequestedOutput("PROBABILITIES", binary_data=False, class_count=1)]
    body, header = client_request(IMAGES[:2], outputs=outputs)
    request = v2.parse_infer_request(body, header, **LIMITS)
    probabilities = np.array([[0.25, 0.75], [0.9, 0.1]], dtype=np.float32)
    content, _ = v2.infer_response(request, "elpv", None, probabilities,
                                   ["defective", "functional"], ["functional", "defective"])
    response = json.loads(content)
    assert "model_version" not in response  # an unversioned head
    [output] = response["outputs"]
    assert output == {"name": "PROBABILITIES", "datatype": "BYTES", "shape": [2, 1],
                      "data": ["0.750000:1:functional", "0.900000:0:defective"]}


def _raw(header: dict[str, object], binary: bytes = b"") -> tuple[bytes, str | None]:
    text = json.dumps(header).encode()
    return text + binary, str(len(text)) if binary else None


def _image_input(**tensor: object) -> dict[str, object]:
    return {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], **tensor}]}


@pytest.mark.parametrize(
    ("body", "header", "fragment"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (*_raw({"inputs": []}), "inputs"),
        (*_raw({"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1],
                            "data": ["aGk="]}]}), "IMAGE"),
        (*_raw(_image_input(datatype="FP32", data=[1.0])), "BYTES"),
        (*_raw(_image_input(shape=[1, 2], data=["aGk=", "aGk="])), "shape"),
        (*_raw(_image_input(shape=[0], data=[])), "no image"),
        (*_raw(_image_input(shape=[2], data=["aGk="])), "holds 1"),
        (*_raw(_image_input(data=["not base64!"])), "base64"),
        (*_raw(_image_input(data=[7])), "base64 string"),
        (*_raw(_image_input()), "data"),
        (*_raw(_image_input(parameters={"binary_data_size": 7}), b"\x05\x00\x00\x00abcde"),
         "binary_data_size"),
        (*_raw(_image_input(parameters={"binary_data_size": 6}), b"\x09\x00\x00\x00ab"),
         "claims 9 bytes"),
        (*_raw(_image_input(parameters={"shared_memory_region": "r"})), "shared memory"),
        (*_raw({**_image_input(data=["aGk="]), "outputs": [{"name": "SCORES"}]}),
         "unknown output"),
        (*_raw({**_image_input(data=["aGk="]),
                "outputs": [{"name": "LABEL", "parameters": {"classification": 2}}]}),
         "classification"),
        (b'{"inputs": []}', "99", "Inference-Header-Content-Length"),
    ],
    ids=["not-json", "not-object", "no-inputs", "wrong-name", "wrong-type", "wrong-shape",
         "empty", "count-mismatch", "bad-base64", "not-string", "no-data", "size-mismatch",
         "truncated-element", "shared-memory", "unknown-output", "classify-label",
         "bad-header-length"],
)
def test_bad_requests_say_what_is_wrong(body: bytes, header: str | None, fragment: str) -> None:
    with pytest.raises(v2.ProtocolError) as info:
        v2.parse_infer_request(body, header, **LIMITS)
    assert fragment.lower() in info.value.message.lower()


def test_limits() -> None:
    body, header = client_request([b"x"] * 9)
    with pytest.raises(TooManyFilesError, match="9"):
        v2.parse_infer_request(body, header, **LIMITS)
    body, header = client_request([b"x" * 1001])
    with pytest.raises(UploadTooLargeError, match="1000"):
        v2.parse_infer_request(body, header, **LIMITS)


def test_compressed_bodies_are_inflated_within_the_limit() -> None:
    body = b'{"inputs": []}' * 10
    assert v2.decompress(gzip.compress(body), "gzip", 1000) == body
    assert v2.decompress(zlib.compress(body), "deflate", 1000) == body
    assert v2.decompress(body, None, 10) == body
    bomb = gzip.compress(b"\0" * 1_000_000)
    with pytest.raises(UploadTooLargeError):
        v2.decompress(bomb, "gzip", 10_000)
    with pytest.raises(v2.ProtocolError, match="br"):
        v2.decompress(body, "br", 1000)
    with pytest.raises(v2.ProtocolError, match="gzip"):
        v2.decompress(b"plain", "gzip", 1000)


@pytest.mark.parametrize("value", ["1_0", "+10", " 10 ", "\u0661\u0660", "10\n", "1" * 5000])
def test_header_length_is_plain_ascii_digits(value: str) -> None:
    """Issue 20, item 4: int() takes all of these (but the last, a ValueError of its own)."""
    body = b'{"inputs": []}' + b"\0" * 30
    with pytest.raises(v2.ProtocolError, match="plain digits"):
        v2.parse_infer_request(body, value, **LIMITS)


def test_inflating_counts_each_piece_before_the_next() -> None:
    """Issue 20, item 3: a 64 KiB gzip body inflates to 64 MiB; the bytes in flight must count
    what it inflates to as it does, so a refusal stops it early."""
    body = b"\0" * (5 << 20) + b"end"
    pieces: list[int] = []
    assert v2.decompress(gzip.compress(body), "gzip", len(body), pieces.append) == body
    assert sum(pieces) == len(body) and max(pieces) <= 1 << 20 and len(pieces) >= 5

    def refuse_after_two(n: int) -> None:
        pieces.append(n)
        if len(pieces) > 2:
            raise RuntimeError("over budget")

    pieces.clear()
    with pytest.raises(RuntimeError, match="over budget"):
        v2.decompress(gzip.compress(body), "gzip", len(body), refuse_after_two)
    assert len(pieces) == 3
