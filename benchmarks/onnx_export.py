"""The ONNX export: ours (the graph built from the weights file with h5py) vs the library
exporter (Keras's `model.export(format="onnx")`, tf2onnx), side by side.

Each export runs in a fresh process (so TensorFlow's import counts), then both graphs run on the
same random batch: the largest difference of each output, and images/s of each (interleaved).
tf2onnx is not a dependency of featcache: `pip install tf2onnx` first (or `--target DIR` and
PYTHONPATH), else only ours is measured.

    .venv/bin/python benchmarks/onnx_export.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import WEIGHTS, machine

TAPS = ("block3_pool", "block4_pool", "block5_pool")

OURS = """
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
from extractor.runtimes import onnx_export
data = onnx_export.build(Path({weights!r}), {taps!r}, 150)
Path({out!r}).write_bytes(data)
print(json.dumps({{"seconds": time.perf_counter() - t0,
                  "tensorflow": "tensorflow" in sys.modules}}))
"""

KERAS = """
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
t0 = time.perf_counter()
import numpy as np
import keras
base = keras.applications.VGG16(include_top=False, weights={weights!r}, input_shape=(150, 150, 3))
model = keras.Model(base.input, [base.get_layer(n).output for n in {taps!r}])
model(np.zeros((1, 150, 150, 3), np.float32))  # export needs a called model
model.export({out!r}, format="onnx", verbose=False)
print(json.dumps({{"seconds": time.perf_counter() - t0,
                  "tensorflow": "tensorflow" in sys.modules}}))
"""


def export(code: str, out: Path) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", code.format(weights=str(WEIGHTS), taps=TAPS,
                                                             out=str(out))],
                          capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1]}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> int:
    import onnxruntime as ort

    from extractor.runtimes.ort import OnnxSession

    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="featcache-export-") as tmp:
        ours, theirs = Path(tmp) / "ours.onnx", Path(tmp) / "keras.onnx"
        r_ours, r_keras = export(OURS, ours), export(KERAS, theirs)
        print(f"ours (h5py):  {json.dumps(r_ours)}")
        print(f"keras export: {json.dumps(r_keras)}", flush=True)
        if "error" in r_keras:
            print("keras export failed (is tf2onnx installed?); only ours measured")
            return 0
        a = OnnxSession(ours, 2)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        b = ort.InferenceSession(str(theirs), so, providers=["CPUExecutionProvider"])
        feed = b.get_inputs()[0].name
        x = np.random.default_rng(0).normal(0, 50, (16, 150, 150, 3)).astype(np.float32)
        mine = a(x)
        other = dict(zip(TAPS, b.run(None, {feed: x}), strict=True))
        print("largest difference:", {k: float(np.abs(mine[k] - other[k]).max()) for k in TAPS})
        for _ in range(3):
            t = time.perf_counter()
            a(x)
            ta = time.perf_counter() - t
            t = time.perf_counter()
            b.run(None, {feed: x})
            tb = time.perf_counter() - t
            print(f"inference, batch 16, 2 threads: ours {16 / ta:.1f} img/s, keras export "
                  f"{16 / tb:.1f} img/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
