"""Classify image files with a featcache server over the Open Inference Protocol (KServe V2),
with Triton's own HTTP client (pip install "tritonclient[http]"):

    python examples/triton_client.py 127.0.0.1:8000 elpv-logreg cell1.png cell2.png

Set FEATCACHE_API_KEY when the server has one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient


def classify(url: str, model: str, paths: list[str],
             version: str = "") -> list[tuple[str, dict[str, float]]]:
    """(label, {class: probability}) for each image file, in order; version "" is the latest."""
    key = os.environ.get("FEATCACHE_API_KEY")
    headers = {"X-API-Key": key} if key else None
    client = httpclient.InferenceServerClient(url)
    try:
        if not client.is_model_ready(model, version, headers=headers):
            raise RuntimeError(f"{model} is not ready")
        metadata = client.get_model_metadata(model, version, headers=headers)
        classes = metadata["parameters"]["classes"]
        # One element per image: the encoded file as it is (PNG, JPEG, ...), sent as binary data.
        images = np.array([Path(p).read_bytes() for p in paths], dtype=np.object_)
        tensor = httpclient.InferInput("IMAGE", [len(paths)], "BYTES")
        tensor.set_data_from_numpy(images)
        result = client.infer(model, [tensor], model_version=version, headers=headers)
        probabilities = result.as_numpy("PROBABILITIES")  # float32, shape (N, len(classes))
        labels = result.as_numpy("LABEL")  # bytes, shape (N,)
    finally:
        client.close()
    return [(label.decode(), dict(zip(classes, map(float, row), strict=True)))
            for label, row in zip(labels, probabilities, strict=True)]


if __name__ == "__main__":
    url, model, *files = sys.argv[1:]
    for path, (label, probabilities) in zip(files, classify(url, model, files), strict=True):
        print(f"{path}: {label} {probabilities}")
