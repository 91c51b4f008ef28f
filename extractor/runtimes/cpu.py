"""What the CPU offers for int8 inference, read from /proc/cpuinfo (Linux; elsewhere: unknown).

int8 convolutions multiply uint8 activations by int8 weights. With VNNI (`avx512_vnni`,
`avx_vnni`) or AMX the products are summed in 32 bits; without them (AVX2-only CPUs such as
Zen 3), onnxruntime uses VPMADDUBSW, which sums pairs of products in 16 bits and saturates with
8-bit weights. `extractor.runtimes.int8` therefore quantizes weights to 7 bits (reduce_range)
everywhere, so one model gives the same features on every CPU; this module says which CPU the
features were made on, for the record.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from pathlib import Path

#: Flags that give 32-bit accumulation of int8 products.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: Flags worth recording beside them.
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]

    @property
    def vnni(self) -> bool:
        """Whether int8 products are summed in 32 bits (no saturation with 8-bit weights)."""
        return any(f in self.flags for f in VNNI_FLAGS)

    def describe(self) -> str:
        shown = [f for f in REPORTED_FLAGS if f in self.flags]
        return f"{self.model} ({', '.join(shown) or 'no AVX2/AVX-512/VNNI/AMX flags'})"


def parse_cpuinfo(text: str) -> CpuInfo:
    """The model name and flags of the first processor in a /proc/cpuinfo text."""
    model, flags = "", ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = value
        if model and flags:
            break
    return CpuInfo(model or platform.processor() or "unknown CPU", frozenset(flags.split()))


@functools.cache
def detect(path: str = "/proc/cpuinfo") -> CpuInfo:
    """This machine's CPU; flags are empty where /proc/cpuinfo does not exist (macOS, Windows)."""
    try:
        return parse_cpuinfo(Path(path).read_text(errors="replace"))
    except OSError:
        return CpuInfo(platform.processor() or platform.machine() or "unknown CPU", frozenset())


def cpu_threads() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS says so)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)
