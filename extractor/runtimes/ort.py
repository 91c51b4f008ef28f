"""Running an ONNX conv base with ONNX Runtime: float32 NHWC in, layer name -> NHWC maps out."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from extractor.runtimes.cpu import cpu_threads
from extractor.runtimes.onnx_export import INPUT_NAME

logger = logging.getLogger(__name__)

#: Execution providers to try before the CPU, comma-separated (e.g. CUDAExecutionProvider).
#: Untested here (no GPU); a provider onnxruntime lacks is skipped with a log line.
PROVIDERS_ENV = "FEATCACHE_ORT_PROVIDERS"


def providers() -> list[str]:
    """The execution providers to ask for: those named in $FEATCACHE_ORT_PROVIDERS that this
    onnxruntime has, then always the CPU (so a GPU is never required)."""
    import onnxruntime as ort

    wanted = [p.strip() for p in os.environ.get(PROVIDERS_ENV, "").split(",") if p.strip()]
    have = set(ort.get_available_providers())
    chosen = []
    for name in wanted:
        if name in have and name != "CPUExecutionProvider":
            chosen.append(name)
        elif name not in have:
            logger.warning("%s=%s: this onnxruntime has no %s (it has %s); using the CPU",
                           PROVIDERS_ENV, os.environ[PROVIDERS_ENV], name, ", ".join(sorted(have)))
    return [*chosen, "CPUExecutionProvider"]


class OnnxSession:
    """An ONNX conv base on ONNX Runtime. Float32 NHWC in; a dict of layer name -> NHWC maps
    out, one per graph output (or those of `outputs`)."""

    def __init__(self, model: bytes | Path, threads: int | None = None,
                 outputs: tuple[str, ...] | None = None) -> None:
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
        self.session = ort.InferenceSession(source, so, providers=providers())
        self.providers = self.session.get_providers()
        names = [o.name for o in self.session.get_outputs()]
        self.outputs = list(outputs) if outputs is not None else names
        missing = [name for name in self.outputs if name not in names]
        if missing:
            raise ValueError(f"the ONNX model has no output {missing} (it has {names})")

    def __call__(self, x: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        results = self.session.run(self.outputs, {INPUT_NAME: x})
        return {name: np.asarray(out, dtype=np.float32)
                for name, out in zip(self.outputs, results, strict=True)}
